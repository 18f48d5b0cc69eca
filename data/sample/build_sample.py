"""Rebuild ``corpus.jsonl.gz`` from text that ships inside installed packages (provenance).

Needs ``konlpy==0.6.0`` (for its bundled corpus files; nothing of konlpy's code is used) and
CPython 3.11's standard library (``pydoc_data.topics``). Run from the repository root:

    python data/sample/build_sample.py
"""

from __future__ import annotations

import gzip
import json
import pydoc_data.topics
import re
import sys
from pathlib import Path

import konlpy

OUT = Path(__file__).resolve().parent / "corpus.jsonl.gz"
KONLPY = Path(konlpy.__file__).parent / "data" / "corpus"


def constitution() -> list[dict]:
    text = (KONLPY / "kolaw" / "constitution.txt").read_text(encoding="utf-8")
    parts = re.split(r"\n(?=[ \t]*제\d+장 |[ \t]*부칙)", text)  # preamble, then one document per chapter
    docs = []
    for i, part in enumerate(p.strip() for p in parts):
        if part:
            docs.append({"id": f"kolaw-constitution-{i:02d}", "text": part, "lang": "ko",
                         "source": "kolaw", "license": "public-domain (KR Copyright Act art. 7)"})
    return docs


def bills() -> list[dict]:
    return [{"id": f"kobill-{p.stem}", "text": p.read_text(encoding="utf-8").strip(), "lang": "ko",
             "source": "kobill", "license": "public-domain (KR Copyright Act art. 7)"}
            for p in sorted((KONLPY / "kobill").glob("*.txt"))]


def python_docs() -> list[dict]:
    return [{"id": f"pydoc-{name}", "text": text.strip(), "lang": "en", "source": "python-docs",
             "license": "PSF-2.0"}
            for name, text in sorted(pydoc_data.topics.topics.items()) if len(text) >= 400]


def main() -> None:
    docs = constitution() + bills() + python_docs()
    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    by = {}
    for d in docs:
        n, b = by.get(d["source"], (0, 0))
        by[d["source"]] = (n + 1, b + len(d["text"].encode()))
    json.dump(by, sys.stdout, indent=1)
    print(f"\n{len(docs)} documents, {sum(b for _, b in by.values())} bytes -> {OUT}")


if __name__ == "__main__":
    main()
