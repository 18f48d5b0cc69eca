"""Runs on an S3-compatible object store: a real S3 server (moto) on loopback, started here.

The token shards are read from ``s3://``, and the checkpoints, ``metrics.jsonl`` and the
TensorBoard events are written there, through ``storage_path: s3://...`` and the
``storage_endpoint`` config field; a second run under the same name resumes from the
checkpoint in the bucket, and a continual run starts from it. Curation reads and writes the
bucket too, and resumes there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raylm import storage
from raylm.config import ConfigError
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit
from tests.train.sample import config

BUCKET = "raylm-test"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; yields its endpoint URL."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in [*KEYS, storage.ENDPOINT_ENV]}
    os.environ.update(KEYS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _objects(endpoint: str, prefix: str) -> dict[str, int]:
    fs, root = storage.filesystem(f"s3://{BUCKET}/{prefix}", endpoint)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return {i.path.removeprefix(root + "/"): i.size for i in infos if i.type == pafs.FileType.File}


def test_train_from_and_to_s3_then_resume_and_continue_from_it(ray_session, s3, shards, tmp_path, monkeypatch):
    fs, root = storage.filesystem(f"s3://{BUCKET}/tokens", s3)
    pafs.copy_files(shards, root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    assert list(_objects(s3, "tokens")) == ["shard-00000.parquet"]

    d = config(shards, tmp_path, "on-s3", 1, steps=6, **{
        "storage_path": f"s3://{BUCKET}/runs", "storage_endpoint": s3, "data.path": f"s3://{BUCKET}/tokens",
        "checkpoint.every": 3, "checkpoint.keep": 1})
    result = fit(train_config(d), env=KEYS)  # a cluster's nodes would have an instance profile
    assert result.error is None
    assert result.checkpoint.path.startswith(f"{BUCKET}/runs/on-s3/")
    objects = _objects(s3, "runs/on-s3")
    ckpt = [k for k in objects if k.endswith("/state.json")]
    assert len(ckpt) == 1 and ckpt[0].startswith("checkpoint_")  # keep: 1 deleted the step-3 one
    assert {"model_and_optim/.metadata", "model_and_optim/__0_0.distcp", "rng-rank0.pt"} <= {
        k.split("/", 1)[-1] for k in objects}  # the sharded (DCP) checkpoint, in the bucket
    events = [k for k in objects if k.startswith("tensorboard/events.out.tfevents.")]
    assert events and all(objects[k] > 0 for k in events)

    rows = read_metrics(f"s3://{BUCKET}/runs/on-s3", s3)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert not (tmp_path / "on-s3").exists()  # nothing went to local disk

    # the same name, more steps: resumes from the step-6 checkpoint in the bucket
    d["steps"] = 8
    assert fit(train_config(d), env=KEYS).error is None
    rows = read_metrics(f"s3://{BUCKET}/runs/on-s3", s3)
    assert [r["step"] for r in rows] == list(range(1, 9))
    with fs.open_input_stream(f"{BUCKET}/runs/on-s3/metrics.jsonl") as f:
        assert len(f.read().splitlines()) == 8  # steps 1-6 were not trained (logged) again

    # a continual run on local storage starts from the bucket's latest checkpoint: the driver
    # resolves the run folder to it (its URI goes to the workers) and each node downloads it once
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAYLM_CACHE", str(cache))
    c = config(shards, tmp_path, "from-s3", 1, steps=2, **{
        "storage_endpoint": s3, "continual.init_from": f"s3://{BUCKET}/runs/on-s3", "checkpoint.every": 0})
    assert fit(train_config(c), env={**KEYS, "RAYLM_CACHE": str(cache)}).error is None
    resolved = json.loads((tmp_path / "from-s3" / "config.json").read_text())["continual"]["init_from"]
    assert resolved.startswith(f"s3://{BUCKET}/runs/on-s3/checkpoint_")
    local = cache / "objects" / "s3" / s3.split("://")[1].replace(":", "_") / resolved.removeprefix("s3://")
    assert (local / ".complete").exists() and json.loads((local / "state.json").read_text())["step"] == 8
    assert read_metrics(str(tmp_path / "from-s3"))[0]["loss"] < rows[0]["loss"] - 0.5  # trained weights
    from raylm.infer.checkpoint import load_model  # raylm eval / generate s3://...: the same copy

    monkeypatch.setenv(storage.ENDPOINT_ENV, s3)  # how those commands find an S3-compatible store
    assert load_model(f"s3://{BUCKET}/runs/on-s3")[2]["step"] == 8


def test_storage_endpoint_must_be_a_url():
    from raylm.config import from_dict
    from raylm.curate.pipeline import CurateConfig

    with pytest.raises(ConfigError, match="storage_endpoint"):
        train_config({"data": {"path": "x"}, "storage_endpoint": "127.0.0.1:9000"})
    with pytest.raises(ConfigError, match="storage_endpoint"):
        from_dict(CurateConfig, {"storage_endpoint": "127.0.0.1:9000"})


def test_curate_from_and_to_s3_resumes_there(s3, tmp_path):
    """``raylm curate s3://... -o s3://...`` (a process with its own local Ray, the endpoint
    from ``storage_endpoint`` in its config, none in its environment), then the same command
    after its stats.json is lost: it resumes from the per-file outputs kept in the bucket."""
    import subprocess
    import sys

    fs, root = storage.filesystem(f"s3://{BUCKET}/raw", s3)
    for i in range(3):
        with fs.open_output_stream(f"{root}/part-{i}.jsonl") as f:
            f.write("".join(json.dumps({"id": f"{i}-{j}", "text": f"document {j} of file {i}, with some words"}) + "\n"
                            for j in range(5)).encode())
    with fs.open_output_stream(f"{root}/part-0-copy.jsonl") as f:
        f.write((json.dumps({"id": "copy", "text": "document 1 of file 0, with some words"}) + "\n").encode())
    cmd = [sys.executable, "-m", "raylm.cli", "curate", f"s3://{BUCKET}/raw", "-o", f"s3://{BUCKET}/curated",
           "--set", "steps=[normalize, exact_dedup]", "--set", "keep_work=true", "--set", "ray.num_cpus=2",
           "--set", f"storage_endpoint={s3}"]
    env = {k: v for k, v in os.environ.items() if k != storage.ENDPOINT_ENV}
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"

    def curate() -> dict:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        with fs.open_input_stream(f"{BUCKET}/curated/stats.json") as f:
            return json.loads(f.read())

    first = curate()
    assert (first["documents_in"], first["kept"]) == (16, 15) and first["conservation_ok"]
    objects = _objects(s3, "curated")
    assert sum(k.startswith("_work/files/") and k.endswith(".json") for k in objects) == 4
    fs.delete_file(f"{BUCKET}/curated/stats.json")
    second = curate()
    assert second["resume"] == {"resumed": True, "units": 4, "units_done_before": 4, "units_curated": 0,
                                "steps_reused": ["01-exact_dedup"]}
    assert second["steps"] == first["steps"]


def test_local_copy_is_one_whole_copy_per_machine(s3, tmp_path, monkeypatch):
    """Processes racing for the same folder (a node's ranks) end with one complete copy and no
    temporary folders; a folder that is not there is an error that leaves nothing behind."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    fs, root = storage.filesystem(f"s3://{BUCKET}/ckpt", s3)
    for i in range(3):
        with fs.open_output_stream(f"{root}/sub/part-{i}.bin") as f:
            f.write(bytes([i]) * 100_000)
    monkeypatch.setenv("RAYLM_CACHE", str(tmp_path))
    uri = f"s3://{BUCKET}/ckpt"
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = set(pool.map(storage.local_copy, [uri] * 6, [s3] * 6))
    (path,) = paths
    copy = sorted(p.relative_to(path).as_posix() for p in Path(path).rglob("*") if p.is_file())
    assert copy == [".complete", "sub/part-0.bin", "sub/part-1.bin", "sub/part-2.bin"]
    parent = Path(path).parent
    assert not [p.name for p in parent.iterdir() if ".tmp-" in p.name]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        storage.local_copy(f"s3://{BUCKET}/nothing-here", s3)
    assert not [p.name for p in parent.iterdir() if ".tmp-" in p.name or p.name == "nothing-here"]
