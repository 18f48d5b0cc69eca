"""``raylm report`` on a real run (the session's 1-worker reference run): a page a browser opens,
with the run's curves as images, its headline figures, hardware and config. A headless Chromium
opens it where one is installed; everywhere an HTML parser checks it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from raylm.cli import main
from raylm.train.config import train_config
from raylm.train.plots import figures
from raylm.train.report import headline
from raylm.train.trainer import run_dir
from tests.train.sample import STEPS

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """Tags must nest and close; collects images, headings and table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: dict[str, bytes] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            assert a["src"].startswith("data:image/png;base64,")
            self.images[a["alt"]] = base64.b64decode(a["src"].split(",", 1)[1], validate=True)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(reference_runs, tmp_path_factory):
    d, result = reference_runs["one"]
    run = run_dir(train_config(d))
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", run, "-o", str(out)]) == 0
    return run, out, result


def test_every_run_records_its_hardware(report):
    run, _, _ = report
    hw = json.loads(Path(run, "hardware.json").read_text())
    assert hw["nodes"] >= 1 and hw["cpus"] >= 1 and hw["torch"] and hw["ray"]


def test_report_page_parses_with_the_run_in_it(report):
    run, out, result = report
    page = Page()
    page.feed(out.read_text())
    page.close()
    assert page.stack == []  # every element closed
    assert {"loss", "lr", "grad_norm", "throughput", "data_wait", "memory"} <= set(page.images)
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000 for png in page.images.values())
    text = " ".join(page.text)
    assert f"{STEPS} of {STEPS}" in text and "training loss" in text and "tokens/s" in text
    assert Path(result.checkpoint.path).name in text  # the latest checkpoint
    assert "cpus" in text and "strategy" in text  # hardware.json and meta.json
    config = json.loads(next(t for t in page.text if t.lstrip().startswith("{")))
    assert config == json.loads(Path(run, "config.json").read_text())


def test_report_opens_in_a_browser(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium here (apt-get install chromium); the HTML parse test stands in")
    _, out, _ = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") >= 6 and "</html>" in dom.stdout
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    shot = subprocess.run([chromium, *flags, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1300,2000",
                           out.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and (tmp_path / "page.png").stat().st_size > 50_000, shot.stderr[-2000:]


def test_headline_counts_spikes_and_rollbacks():
    rows = [{"step": s, "loss": 5.0 - s / 10, "tokens_per_s": 100.0, "spike": s in (3, 5),
             "rollbacks": int(s >= 5), "tokens_seen": 64 * s} for s in range(1, 7)]
    top = dict(headline(rows, {"steps": 6}))
    assert top["spikes skipped / rollbacks"] == "2 / 1" and top["steps"] == "6 of 6"
    marked, plain = figures(rows)["loss"], figures([{**r, "spike": False, "rollbacks": 0} for r in rows])["loss"]
    assert marked != plain  # the spikes and the rollback are drawn on the loss curve


def test_report_of_a_missing_run_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
