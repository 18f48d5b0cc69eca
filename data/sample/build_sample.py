#!/usr/bin/env python3
"""Rebuild data/sample/corpus.jsonl.gz, the small real EN/KO sample corpus.

Provenance script: the committed corpus.jsonl.gz is what raylm uses; this
script documents (and can reproduce) how it was made, fully offline, from
text that ships inside ordinary registry packages.

Needs:
  * PyPI  ``konlpy`` (0.6.0 used) installed in the running interpreter
    -- only its bundled corpus files are read (kolaw/constitution.txt,
    kobill/*.txt), no Java/JPype needed.
  * Debian (bookworm) packages, fetched with ``apt-get download`` into a temp
    dir and unpacked with ``dpkg-deb -x`` (nothing is installed):
      r-cran-janeaustenr (1.0.0-1), dict-devil (1.0-13.1).
    Only public-domain text is kept: Korean government works and expired-copyright books.
    (Larger Korean texts that ship offline -- the Debian FAQ, LibreOffice help -- carry
    share-alike terms, so they are left out.)
    Run ``apt-get update`` first.  Pass ``--debs DIR`` to reuse a directory
    that already holds those .deb files.

Usage:  python data/sample/build_sample.py [--debs DIR] [--out PATH]
Output is deterministic for the same package versions.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
DEBS = ["r-cran-janeaustenr", "dict-devil"]
AUSTEN_KEEP = {"gutenberg-105"}  # Persuasion: enough English beside the Korean

LIC_KOGOV = "Public domain (KR government work, Copyright Act art. 7)"
LIC_PD = "Public domain"
LIC_PSF = "PSF-2.0"

# Budgets (UTF-8 bytes of text) so the sample stays a few MB.
LO_BUDGET = 820_000

HANGUL = re.compile("[\uac00-\ud7a3]")
LATIN = re.compile("[A-Za-z]")


def ko_ratio(t: str) -> float:
    h = len(HANGUL.findall(t))
    return h / max(1, h + len(LATIN.findall(t)))


def norm(t: str) -> str:
    t = t.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    t = re.sub(r"[ \t]+\n", "\n", t)
    t = re.sub(r"\n{3,}", "\n\n", t)
    return t.strip()


def chunk(text: str, target: int = 4000, hard: int = 8000) -> list[str]:
    """Split on paragraph (blank-line) boundaries into ~target-byte pieces."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paras:  # break over-long paragraphs on line / sentence ends
        while len(p.encode()) > hard:
            half = int(hard // 2 * len(p) / len(p.encode()))  # ~hard/2 bytes, in characters
            cut = p.rfind("\n", 0, half)
            if cut < half // 4:
                cut = max(p.rfind(". ", 0, half), p.rfind("다. ", 0, half))
                cut = cut + 1 if cut > 0 else half
            pieces.append(p[:cut].strip())
            p = p[cut:].strip()
        pieces.append(p)
    out, cur = [], ""
    for p in pieces:
        if cur and len((cur + "\n\n" + p).encode()) > target:
            out.append(cur)
            cur = p
        else:
            cur = cur + "\n\n" + p if cur else p
    if cur:
        if out and len(cur.encode()) < target // 4:
            out[-1] += "\n\n" + cur
        else:
            out.append(cur)
    return out


def doc(id_, text, lang, source, lic):
    return {"id": id_, "text": text, "lang": lang, "source": source, "license": lic}


# ---------------------------------------------------------------- HTML -> text
def konlpy_docs():
    import konlpy

    base = os.path.join(os.path.dirname(konlpy.__file__), "data", "corpus")
    with open(os.path.join(base, "kolaw", "constitution.txt"), encoding="utf-8") as f:
        const = f.read()
    parts = re.split(r"\n(?=\s*(?:제\d+장 |부칙))", const)
    docs = []
    for i, part in enumerate(parts):
        part = norm("\n".join(ln.strip() for ln in part.split("\n")))
        m = re.match(r"(제(\d+)장|부칙)", part)
        tag = "preamble" if i == 0 else (f"ch{int(m.group(2)):02d}" if m and m.group(2) else "addenda")
        for j, c in enumerate(chunk(part, 6000, 9000)):
            docs.append(doc(f"kolaw-constitution-{tag}-{j}", c, "ko", "kolaw", LIC_KOGOV))
    for path in sorted(glob.glob(os.path.join(base, "kobill", "*.txt"))):
        with open(path, encoding="utf-8") as f:
            t = norm("\n".join(ln.strip() for ln in f.read().split("\n")))
        docs.append(doc(f"kobill-{os.path.basename(path)[:-4]}", t, "ko", "kobill", LIC_KOGOV))
    return docs


def _rds_strings(b: bytes) -> list[str]:
    """Decode an R XDR-serialised character vector (STRSXP)."""
    assert b[:2] == b"X\n"
    pos = 2
    (ver,) = struct.unpack(">i", b[pos:pos + 4])
    pos += 12
    if ver == 3:
        (n,) = struct.unpack(">i", b[pos:pos + 4])
        pos += 4 + n
    (flags,) = struct.unpack(">i", b[pos:pos + 4])
    pos += 4
    assert flags & 0xFF == 16, "not a character vector"
    (n,) = struct.unpack(">i", b[pos:pos + 4])
    pos += 4
    out = []
    for _ in range(n):
        _fl, ln = struct.unpack(">ii", b[pos:pos + 8])
        pos += 8
        if ln == -1:
            out.append("")
            continue
        out.append(b[pos:pos + ln].decode("utf-8", "replace"))
        pos += ln
    return out


AUSTEN = {  # janeaustenr object -> (fingerprint, slug, Gutenberg ebook no.)
    "prideprejudice": ("Elizabeth Bennet", "pride-and-prejudice", 1342),
    "persuasion": ("Kellynch", "persuasion", 105),
    "northangerabbey": ("Catherine Morland", "northanger-abbey", 121),
}


def austen_docs(root):
    data = open(glob.glob(os.path.join(root, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"))[0], "rb").read()
    books, pos = [], 0
    while pos < len(data):
        z = zlib.decompressobj()
        raw = z.decompress(data[pos + 4:])
        books.append("\n".join(_rds_strings(raw)))
        pos = len(data) - len(z.unused_data)
    docs = []
    for fp, slug, gid in AUSTEN.values():
        text = max(books, key=lambda b: b.count(fp))
        text = norm(re.sub(r"(?m)^[ \t]+", "", text))
        chapters = re.split(r"\n(?=(?:CHAPTER|Chapter) [0-9IVXLC]+\.?\s*\n)", "\n" + text)
        k, pending = 0, ""
        for ch in chapters:
            ch = (pending + ch).strip()
            if len(ch.encode()) < 500:  # title page: keep it with the first chapter
                pending = ch + "\n\n"
                continue
            pending = ""
            for c in chunk(ch, 5000, 8000):
                if c:
                    docs.append(doc(f"austen-{slug}-{k:04d}", c, "en", f"gutenberg-{gid}", LIC_PD))
                    k += 1
    return docs


def devil_docs(root):
    import base64  # noqa: F401  (dictd uses its own b64 alphabet)

    alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s):
        v = 0
        for ch in s:
            v = v * 64 + alpha.index(ch)
        return v

    d = os.path.join(root, "usr/share/dictd")
    body = gzip.open(os.path.join(d, "devil.dict.dz")).read()
    entries = []
    for line in open(os.path.join(d, "devil.index"), encoding="utf-8"):
        word, off, ln = line.rstrip("\n").split("\t")[:3]
        if word.startswith("00-database") or word.startswith("00database"):
            continue
        e = body[b64(off):b64(off) + b64(ln)].decode("utf-8", "replace")
        e = norm("\n".join(ln.strip() for ln in e.split("\n")))
        entries.append((b64(off), e))
    entries = [e for _, e in sorted(set(entries))]
    docs = []
    for j, c in enumerate(chunk("\n\n".join(entries), 4000, 8000)):
        docs.append(doc(f"devils-dictionary-{j:03d}", c, "en", "devils-dictionary", LIC_PD))
    return docs


# ---------------------------------------------------------------- main
def fetch_debs(dest):
    subprocess.run(["apt-get", "download", *DEBS], cwd=dest, check=True)


def unpack(debdir, tmp):
    roots = {}
    for name in DEBS:
        deb = sorted(glob.glob(os.path.join(debdir, f"{name}_*.deb")))[-1]
        root = os.path.join(tmp, name)
        os.makedirs(root, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
        roots[name] = root
    return roots


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--debs", help="directory holding the .deb files (default: apt-get download)")
    ap.add_argument("--out", default=os.path.join(HERE, "corpus.jsonl.gz"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        debdir = a.debs
        if not debdir:
            debdir = os.path.join(tmp, "debs")
            os.makedirs(debdir)
            fetch_debs(debdir)
        r = unpack(debdir, tmp)
        austen = [d for d in austen_docs(r["r-cran-janeaustenr"]) if d["source"] in AUSTEN_KEEP]
        docs = konlpy_docs() + austen + devil_docs(r["dict-devil"])
    ids = set()
    for d in docs:
        assert d["id"] not in ids, d["id"]
        ids.add(d["id"])
        assert d["text"].strip()
        if d["lang"] == "ko":
            assert ko_ratio(d["text"]) >= 0.5, d["id"]
    with open(a.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for d in docs:
            gz.write((json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8"))
    stats = {}
    for d in docs:
        s = stats.setdefault((d["lang"], d["source"], d["license"]), [0, 0])
        s[0] += 1
        s[1] += len(d["text"].encode())
    for k, (n, b) in sorted(stats.items()):
        print(f"{k[0]}\t{k[1]}\t{n}\t{b}\t{k[2]}")
    print("total", len(docs), sum(v[1] for v in stats.values()), "->", os.path.getsize(a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
