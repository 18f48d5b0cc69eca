"""Build the text behind the per-language quality table from Debian's translated documentation.

LibreOffice 7.4's help (Debian 12 packages ``libreoffice-help-{en-us,ko,ja,zh-cn,de,fr,es}``
4:7.4.7-1+deb12u14, MPL-2.0) has the same 2,560 pages in each of the seven languages of the
table. A page whose translation is incomplete keeps English sentences, so a page is used only
where every language has it translated (Korean, Japanese, Chinese: the script is right and
at most 5% of the lines are English sentences; German, French, Spanish: the text differs
from the English page). Those pages are split at random, by page, into two disjoint sets:

* ``parallel``: ``--pages`` pages in all seven languages, written to
  ``benchmarks/data/quality_fairness/parallel.jsonl.gz`` (committed) for
  ``benchmarks/quality_fairness.py``;
* ``reference``: every other complete page, written to ``OUT/<lang>.jsonl.gz``: what
  ``raylm curate fit-thresholds`` fitted the shipped table on (not committed; this command
  rebuilds it).

Korean pages that mix Hangul with English names, menu paths and commands (at least 20% of the
letters Latin) go to ``mixed_ko.jsonl.gz`` for ``langid``.

    python benchmarks/quality_corpus.py -o out/quality_reference

It downloads the packages with ``apt-get download`` into a temporary folder.
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from raylm.curate.steps.segment import guess_script_lang  # noqa: E402

LICENCE = {"source": "libreoffice-help 4:7.4.7-1+deb12u14 (Debian 12)", "license": "MPL-2.0"}
DATA = ROOT / "benchmarks" / "data" / "quality_fairness"
LANGS = ("en", "ko", "ja", "zh", "de", "fr", "es")
LIBREOFFICE = {"en": "en-us", "ko": "ko", "ja": "ja", "zh": "zh-cn", "de": "de", "fr": "fr", "es": "es"}
LIBREOFFICE_DIR = {"en": "en-US", "ko": "ko", "ja": "ja", "zh": "zh-CN", "de": "de", "fr": "fr", "es": "es"}
_SPACES = re.compile(r"\s+")
_LATIN = re.compile(r"[A-Za-z]")
_LETTER = re.compile(r"[^\W\d_]")


def download(packages: list[str], into: Path) -> Path:
    """``apt-get download`` the packages and unpack them under ``into/root``."""
    root = into / "root"
    for pkg in packages:
        subprocess.run(["apt-get", "download", pkg], cwd=into, check=True, capture_output=True)
    for deb in sorted(into.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


class _HelpPage(html.parser.HTMLParser):
    """The text of a LibreOffice help page's ``DisplayArea``: one line per block element."""

    BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "pre", "div", "tr", "br"}

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # div nesting inside DisplayArea; 0: outside
        self.lines: list[str] = []
        self.current: list[str] = []

    def flush(self) -> None:
        line = _SPACES.sub(" ", "".join(self.current)).strip()
        if line:
            self.lines.append(line)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.depth == 0:
            if tag == "div" and ("id", "DisplayArea") in attrs:
                self.depth = 1
            return
        if tag == "div":
            self.depth += 1
            if ("class", "relatedtopics") in attrs:
                self.depth = -self.depth  # skip the related-topics box
        if tag in self.BLOCKS:
            self.flush()
            if tag in ("h1", "h2", "h3") and self.lines:
                self.lines.append("")

    def handle_endtag(self, tag: str) -> None:
        if self.depth == 0:
            return
        if tag in self.BLOCKS:
            self.flush()
        if tag == "div":
            self.depth = self.depth - 1 if self.depth > 0 else self.depth + 1
            if self.depth == -1:
                self.depth = 0

    def handle_data(self, data: str) -> None:
        if self.depth > 0:
            self.current.append(data)


def libreoffice_text(path: Path) -> str:
    parser = _HelpPage()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.flush()
    return "\n".join(parser.lines).strip()


def english_lines(text: str) -> float:
    """Share of lines that are English sentences left untranslated (over 40 characters, over
    60% of the letters Latin)."""
    lines = [line for line in text.split("\n") if line.strip()]
    bad = 0
    for line in lines:
        letters = len(_LETTER.findall(line))
        bad += len(line) > 40 and letters > 0 and len(_LATIN.findall(line)) / letters > 0.6
    return bad / max(1, len(lines))


def translated(lang: str, text: str, english: str) -> bool:
    """The page is in ``lang``, not left (partly) in English."""
    if lang == "en":
        return bool(text)
    if lang in ("ko", "ja", "zh"):
        return guess_script_lang(text) == lang and english_lines(text) <= 0.05
    return text != english


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def build(out: Path, pages: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = download([f"libreoffice-help-{LIBREOFFICE[lang]}" for lang in LANGS], Path(tmp))
        base = root / "usr/share/libreoffice/help"
        english_dir = base / LIBREOFFICE_DIR["en"]
        names = sorted(p.relative_to(english_dir).as_posix() for p in (english_dir / "text").rglob("*.html"))
        complete: dict[str, dict[str, str]] = {}
        mixed = []
        for name in names:
            texts = {}
            for lang in LANGS:
                path = base / LIBREOFFICE_DIR[lang] / name
                texts[lang] = libreoffice_text(path) if path.is_file() else ""
            if all(translated(lang, t, texts["en"]) for lang, t in texts.items()):
                complete[name] = texts
            ko = texts["ko"]
            letters = len(_LETTER.findall(ko))
            if guess_script_lang(ko) == "ko" and len(ko) >= 300 and len(_LATIN.findall(ko)) >= 0.2 * letters:
                mixed.append({"id": f"libreoffice-help/{name}", "lang": "ko", "text": ko,
                              "latin_share": round(len(_LATIN.findall(ko)) / letters, 3), **LICENCE})
    chosen = set(random.Random(seed).sample(sorted(complete), min(pages, len(complete) // 2)))
    parallel = [{"id": f"libreoffice-help/{name}", "lang": lang, "text": complete[name][lang], **LICENCE}
                for name in sorted(chosen) for lang in LANGS]
    write_jsonl(DATA / "parallel.jsonl.gz", parallel)
    mixed = random.Random(seed).sample(mixed, min(40, len(mixed)))
    write_jsonl(DATA / "mixed_ko.jsonl.gz", sorted(mixed, key=lambda r: r["id"]))
    for lang in LANGS:
        rows = [{"id": f"libreoffice-help/{name}", "lang": lang, "text": texts[lang]}
                for name, texts in complete.items() if name not in chosen]
        write_jsonl(out / f"{lang}.jsonl.gz", rows)
    print(f"{len(complete)} of {len(names)} pages translated in every language: {len(chosen)} in the parallel "
          f"set ({len(parallel)} documents), {len(complete) - len(chosen)} per language in {out}; "
          f"{len(mixed)} mixed Korean pages")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=ROOT / "out" / "quality_reference",
                   help="folder for the reference corpus (<lang>.jsonl.gz)")
    p.add_argument("--pages", type=int, default=80, help="pages in the committed parallel set")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    build(args.output, args.pages, args.seed)


if __name__ == "__main__":
    main()
