"""The console's rules without Ray: how loud it is, and what a stage shows on a terminal (a
tqdm bar, on a real pseudo-terminal) and off one (one line when it ends)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios

import pytest

from raylm import console
from raylm.cli import parser


@pytest.fixture
def level(monkeypatch):
    monkeypatch.delenv(console.ENV, raising=False)
    return monkeypatch


def test_quiet_by_default_and_loud_on_request(level):
    assert not console.loud() and console.ray_env()["RAY_DATA_LOG_LEVEL"] == "WARNING"
    assert console.ray_init_kwargs()["logging_level"] == "WARNING"
    assert console.train_logging().log_level == "WARNING"
    for argv, want in ((["-v", "demo"], "INFO"), (["demo", "-vv"], "DEBUG"),
                       (["tokenizer", "train", "x", "-o", "y", "-vv"], "DEBUG")):
        level.delenv(console.ENV, raising=False)
        console.set_verbosity(parser().parse_args(argv).verbose)
        assert os.environ[console.ENV] == want and console.loud()
        assert "RAY_DATA_LOG_LEVEL" not in console.ray_env() and console.ray_env()[console.ENV] == want
        assert console.train_logging().log_level == "INFO"
    level.setenv(console.ENV, "nonsense")
    assert not console.loud()


def test_quiet_ray_data_drops_its_false_no_cpu_warning_only(level):
    """A dataset materialised while the run's own tasks hold every CPU makes Ray Data warn that
    'the Dataset job will hang': it waits for them, as meant. Its other warnings still show."""
    import logging

    console.quiet_ray_data()
    console.quiet_ray_data()  # twice: one filter
    logger = logging.getLogger("ray.data.dataset")
    assert sum(isinstance(f, console._NoCpuNotice) for f in logger.filters) == 1

    def shown(message: str) -> bool:
        return logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None))

    assert not shown("Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang")
    assert shown("Warning: something else")


def test_stage_off_a_terminal_is_one_line(level, capsys):
    with console.stage("curate", total=3, unit="file") as s:
        for _ in range(3):
            s.advance(1, docs=100, bytes=2_000_000)
        s.done("3 files, 300 docs")
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1  # progress on stderr: stdout is for results
    assert err.startswith("curate     3 files, 300 docs in ") and "docs/s" in err and "MB/s" in err


@pytest.mark.parametrize("columns", [120, 0])  # 0: a pseudo-terminal that reports no width (script, some CI)
def test_stage_on_a_terminal_is_a_bar(level, monkeypatch, columns):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    tty = open(slave, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(sys, "stdout", tty)
    with console.stage("tokenizer", unit="doc") as s:
        for _ in range(5):
            s.advance(1, docs=1, bytes=1000)
        s.phase("training")
        s.done("bpe, 2000 pieces from 5 docs")
    tty.flush()
    chunks = []
    while select.select([master], [], [], 0.5)[0]:
        chunks.append(os.read(master, 65536))
    shown = b"".join(chunks).decode()
    tty.close()
    os.close(master)
    assert "\r" in shown and "tokenizer: training" in shown and "5doc" in shown.replace(" ", "")
    final = shown.rstrip().split("\r")[-1]  # the bar stays, with its summary and rates
    assert final.startswith("tokenizer: 5doc [") and "bpe, 2000 pieces from 5 docs, " in final
    assert "MB/s" in final and "docs/s" not in final  # tqdm's doc/s, not the same rate twice


def test_human_and_duration():
    assert console.human(236544) == "237k" and console.human(1.5e9) == "1.5G" and console.human(12) == "12"
    assert console.human(126.45) == "126" and console.human(0.5) == "0.5"
    assert console.duration(3.21) == "3.2s" and console.duration(75.3) == "1m15s"
