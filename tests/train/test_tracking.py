"""``raylm train`` with MLflow (a file store) and W&B (offline) tracking, 2 workers, run as a
person runs it in a terminal: the command's stdout and stderr are a pseudo-terminal, so its
console draws a progress bar; what rank 0 logged is read back from both trackers' own files."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import pty
import struct
import sys
import termios
import threading
from pathlib import Path

import pytest
import yaml

from raylm.cli import main
from raylm.config import to_dict
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.tracking import flatten
from tests.train.sample import STEPS, config

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")


def wandb_records(path: str):
    """The protobuf records of an offline W&B run file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = Path(path).read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the zero padding at a block's end
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@contextlib.contextmanager
def terminal():
    """sys.stdout and sys.stderr on a pseudo-terminal; yields a list that fills with what it shows."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    shown: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the slave side closed
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out = open(slave, "w", buffering=1, closefd=False)
    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    try:
        yield shown
    finally:
        sys.stdout, sys.stderr = old
        out.flush()
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)


@pytest.fixture(scope="module")
def tracked(ray_session, shards, tmp_path_factory):
    """One 2-worker run with both trackers, launched by ``raylm train`` on a terminal."""
    tmp = tmp_path_factory.mktemp("tracked")
    d = config(shards, tmp / "runs", "tracked", 2)
    d["tracking"] = {"mlflow": {"tracking_uri": f"file://{tmp}/mlruns", "experiment": "tests"},
                     "wandb": {"mode": "offline", "dir": str(tmp / "wb"), "project": "tests"}}
    (tmp / "train.yaml").write_text(yaml.safe_dump(d))
    with terminal() as shown:
        code = main(["train", "-c", str(tmp / "train.yaml")])
    return {"code": code, "shown": b"".join(shown).decode("utf-8", "replace"), "tmp": tmp,
            "cfg": train_config(d), "run": tmp / "runs" / "tracked"}


def test_a_terminal_shows_a_progress_bar(tracked):
    shown = tracked["shown"]
    assert tracked["code"] == 0, shown[-3000:]
    assert "\r" in shown and f"{STEPS}/{STEPS}" in shown
    bar = [part for part in shown.split("\r") if part.startswith("train:")]
    assert bar and "loss " in bar[-1] and "tok/s" in bar[-1] and "█" in bar[-1]
    assert f"step 1/{STEPS}  loss" not in shown  # no per-window lines on a terminal
    assert f"report: {tracked['run']}/report.html" in shown and "Reporting training result" not in shown
    assert (tracked["run"] / "report.html").stat().st_size > 10_000  # raylm train ends with the run's report


def test_mlflow_file_store_has_the_run(tracked, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 deprecates the file store

    client = MlflowClient(tracking_uri=f"file://{tracked['tmp']}/mlruns")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1  # rank 0 only
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    params = flatten(to_dict(tracked["cfg"]))
    assert run.data.params["model.d_model"] == str(params["model.d_model"])
    assert run.data.params["optim.lr"] == str(params["optim.lr"])
    rows = read_metrics(str(tracked["run"]))
    logged = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert logged <= set(run.data.metrics)  # every metric TensorBoard got
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [r["step"] for r in rows]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r["loss"] for r in rows])
    checkpoint = Path(run.data.tags["checkpoint"])  # the last one Ray Train persisted
    assert checkpoint.parent == tracked["run"] and checkpoint.is_dir()
    assert checkpoint == max(p for p in tracked["run"].glob("checkpoint_*") if p.is_dir())


def test_wandb_offline_run_has_the_run(tracked):
    runs = glob.glob(str(tracked["tmp"] / "wb" / "wandb" / "offline-run-*"))
    assert len(runs) == 1  # rank 0 only
    records = list(wandb_records(glob.glob(f"{runs[0]}/run-*.wandb")[0]))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {_key(i): json.loads(i.value_json) for i in run.config.update}
    assert config["model"]["d_model"] == tracked["cfg"].model.d_model and config["name"] == "tracked"
    history = [{_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    rows = read_metrics(str(tracked["run"]))
    assert [h["_step"] for h in history] == [r["step"] for r in rows]
    assert [h["loss"] for h in history] == pytest.approx([r["loss"] for r in rows])
    summary = {_key(i): json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update}
    assert Path(summary["checkpoint"]).parent == tracked["run"] and Path(summary["checkpoint"]).is_dir()
