"""A real Ray head for the tests that drive a cluster from outside: ``ray start --head`` on free
ports with token authentication, in its own session and temp folder, stopped by killing only
its own processes (never ``ray stop``, which would stop every Ray on the machine, the test
session's included)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


@dataclass
class Head:
    address: str
    """The dashboard's HTTP address: the job API and the state API (``ray job``, ``ray list``)."""
    gcs: str
    """host:port of the GCS (``ray status``, ``ray drain-node``)."""
    env: dict[str, str]
    """The environment every ``ray`` command needs (the token)."""
    temp_dir: str


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    # Ray's own processes of this head and of the nodes it started (they may leave the process
    # group) carry its temp dir
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit():
            with contextlib.suppress(OSError):
                if temp_dir.encode() in (pid / "cmdline").read_bytes():
                    os.kill(int(pid.name), signal.SIGKILL)


@contextlib.contextmanager
def start_head(args: list[str], env: dict[str, str] | None = None, gcs_port: int | None = None) -> Iterator[Head]:
    """``ray start --head ARGS`` with ``RAY_AUTH_MODE=token``, the dashboard on loopback and every
    port free; yields once its job API answers. ``env`` is added to the head's environment."""
    import pytest

    if not RAY.exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs = gcs_port or free_ports(1)[0]
    dash, client, agent, agent_grpc, metrics, env_agent, nm, om = free_ports(8)
    full_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                "PATH": f"{RAY.parent}:{os.environ.get('PATH', '')}", "RAY_DEDUP_LOGS": "0", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
         f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--temp-dir={temp_dir}",
         "--disable-usage-stats", *args],
        env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(RAY), "job", "list", "--address", address], env=full_env,
                             capture_output=True).returncode != 0:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the head's job API did not come up in 60 s"
            time.sleep(1)
        from ray._private.services import get_node_ip_address

        yield Head(address, f"{get_node_ip_address()}:{gcs}", full_env, temp_dir)
    finally:
        _stop(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
