"""Object storage for runs: checkpoints, token shards and logs under ``s3://...`` (or any URI
pyarrow reads), on AWS or an S3-compatible store (MinIO, Ceph, moto) named by an endpoint.

Every reader and writer in raylm goes through ``pyarrow.fs``, which takes an S3 endpoint from
``AWS_ENDPOINT_URL`` (credentials from the usual ``AWS_*`` variables or the node's instance
profile). ``use_endpoint`` sets it in this process and returns it for Ray workers'
``runtime_env``; ``filesystem`` gives Ray Train its ``storage_filesystem``; ``local_copy``
downloads a folder once per machine (a checkpoint in the bucket that a continual run, ``raylm
eval`` or ``raylm generate`` starts from) into ``RAYLM_CACHE`` (default ``~/.cache/raylm``).

``RunLog`` is a Ray Train callback on the driver side that keeps ``metrics.jsonl`` and
``tensorboard/`` of a run whose storage is an object store (rank 0 writes them directly into
a local run folder): it writes locally, then copies both into ``<storage>/<name>/`` after
every report, so ``tensorboard --logdir s3://...`` follows a run from anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import pyarrow.fs as pafs
from ray.train import UserCallback

ENDPOINT_ENV = "AWS_ENDPOINT_URL"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def use_endpoint(endpoint: str | None) -> dict[str, str]:
    """Point this process's S3 clients at ``endpoint``; the env vars Ray workers need for it."""
    if not endpoint:
        return {}
    os.environ[ENDPOINT_ENV] = endpoint
    return {ENDPOINT_ENV: endpoint}


def filesystem(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or a URI."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    if uri.startswith("s3://") and endpoint:
        # keys from the environment travel inside the filesystem object when Ray pickles it
        # to its controller and workers; without them the node's instance profile is used
        keys = {"access_key": os.environ["AWS_ACCESS_KEY_ID"], "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"],
                "session_token": os.environ.get("AWS_SESSION_TOKEN")} \
            if "AWS_ACCESS_KEY_ID" in os.environ and "AWS_SECRET_ACCESS_KEY" in os.environ else {}
        fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[-1],
                               scheme="http" if endpoint.startswith("http://") else "https", **keys)
        return fs, uri.removeprefix("s3://").rstrip("/")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def cache_root() -> str:
    return os.environ.get("RAYLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "raylm")


def local_copy(uri: str, endpoint: str | None = None) -> str:
    """``uri`` itself if it is a local path; else a local copy of the object-store folder it
    names, downloaded once per machine into ``cache_root()/objects/<scheme>/<host>/<path>``
    (``<host>``: the endpoint's, so two stores never share an entry). The processes of one
    machine take a file lock, so one of them downloads while the others wait and then read its
    copy; the copy is made in a temporary folder and renamed into place with a ``.complete``
    marker, so an interrupted download is done again."""
    import fcntl

    if not is_remote(uri):
        return uri.removeprefix("file://")
    fs, path = filesystem(uri, endpoint)
    host = (endpoint or os.environ.get(ENDPOINT_ENV) or "default").split("://", 1)[-1].replace(":", "_").strip("/")
    dest = os.path.join(cache_root(), "objects", uri.split("://", 1)[0], host, path.lstrip("/"))
    done = os.path.join(dest, ".complete")
    if os.path.exists(done):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(f"{dest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if os.path.exists(done):  # another process of this machine made it meanwhile
            return dest
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{uri}: no such folder")
        tmp = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=os.path.basename(dest) + ".tmp-")
        try:
            pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            open(os.path.join(tmp, ".complete"), "w").close()
            shutil.rmtree(dest, ignore_errors=True)  # an unmarked copy left by an older version
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


class RunLog(UserCallback):
    """``metrics.jsonl`` and TensorBoard scalars (and samples) of rank 0's reports, copied to
    ``<storage>/<name>/``."""

    def __init__(self, fs: pafs.FileSystem, root: str, name: str) -> None:
        self.fs, self.run, self.name = fs, f"{root}/{name}", name
        self.local: str | None = None
        self.rows: list[dict[str, Any]] = []
        self.writer = None

    def _start(self) -> None:
        from raylm.train.metrics import TensorBoard

        self.local = tempfile.mkdtemp(prefix=f"raylm-runlog-{self.name}-")
        try:  # a run started again under the same name continues its log
            with self.fs.open_input_stream(f"{self.run}/metrics.jsonl") as f:
                self.rows = [json.loads(line) for line in f.read().decode().splitlines() if line]
        except (FileNotFoundError, OSError):
            self.rows = []
        self.writer = TensorBoard(os.path.join(self.local, "tensorboard"))

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics or "step" not in metrics[0]:
            return
        if self.writer is None:
            self._start()
        row = metrics[0]
        self.rows.append(row)
        self.writer.log(row["step"], {k: v for k, v in row.items() if k != "step"})
        self.upload()

    def upload(self) -> None:
        fs, run = self.fs, self.run
        fs.create_dir(f"{run}/tensorboard", recursive=True)
        with fs.open_output_stream(f"{run}/metrics.jsonl") as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.rows).encode())
        tb = os.path.join(self.local, "tensorboard")
        for name in os.listdir(tb):
            pafs.copy_files(os.path.join(tb, name), f"{run}/tensorboard/{name}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
