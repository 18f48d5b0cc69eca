"""Object storage for runs: checkpoints, token shards and logs under ``s3://...`` (or any URI
pyarrow reads), on AWS or an S3-compatible store (MinIO, Ceph, moto) named by an endpoint.

Every reader and writer in raylm goes through ``pyarrow.fs``, which takes an S3 endpoint from
``AWS_ENDPOINT_URL`` (credentials from the usual ``AWS_*`` variables or the node's instance
profile). ``use_endpoint`` sets it in this process and returns it for Ray workers'
``runtime_env``; ``filesystem`` gives Ray Train its ``storage_filesystem``; ``local_copy``
downloads a folder once per machine (a checkpoint in the bucket that a continual run, ``raylm
eval`` or ``raylm generate`` starts from) into ``RAYLM_CACHE`` (default ``~/.cache/raylm``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pyarrow.fs as pafs

ENDPOINT_ENV = "AWS_ENDPOINT_URL"


class InputError(ValueError):
    """An input path that does not exist or cannot be read."""


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
