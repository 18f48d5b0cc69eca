"""The shipped sample corpus prepared for the training tests: two sources that each mix English
and Korean documents (``books``: Austen and the Korean constitution; ``web``: Bierce and
Korean bills) and a one-document source, through ``raylm prepare`` with a held-out split and
FIM. ``tests/train/conftest.py`` prepares it once per session (fixture ``prepared``)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raylm.data.prepare import HeldOutConfig, PrepareConfig, held_out, prepare
from raylm.data.tokenizer import TokenizerConfig, train_from_iterator
from raylm.data.transforms import FIMConfig

SAMPLE = Path(__file__).parents[2] / "data/sample/corpus.jsonl.gz"
SEQ_LEN, VOCAB = 64, 1024
SOURCES = {"books": ("gutenberg-105", "kolaw"), "web": ("devils-dictionary", "kobill")}
VAL = HeldOutConfig(fraction=0.15, seed=1)
FIM = FIMConfig(rate=0.5, spm_rate=0.5, seed=2)


def prepare_sample(tmp: Path) -> dict:
    """Curated Parquet (id, text, lang) per source in two files (and a one-document source), a
    1024-piece BPE, and ``prepare`` with a 15% held-out split and FIM at rate 0.5, under ``tmp``."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    files: dict[str, list[list[dict]]] = {}
    for name, origins in SOURCES.items():
        mine = [d for d in docs if d["source"] in origins]
        files[name] = [mine[0::2], mine[1::2]]
        (tmp / "curated" / name).mkdir(parents=True)
        for i, part in enumerate(files[name]):
            pq.write_table(pa.table({k: [d[k] for d in part] for k in ("id", "text", "lang")}),
                           tmp / "curated" / name / f"part-{i}.parquet")
    # a one-document source whose document is not held out: its val split is empty
    tiny = next(d for d in docs if not held_out([d["text"]], VAL)[0])
    (tmp / "curated" / "tiny").mkdir(parents=True)
    pq.write_table(pa.table({k: [tiny[k]] for k in ("id", "text", "lang")}), tmp / "curated" / "tiny" / "part-0.parquet")
    lines = [x for d in docs for x in d["text"].splitlines() if x.strip()]
    model = str(train_from_iterator(lines[::2], str(tmp / "tok"),
                                    TokenizerConfig(vocab_size=VOCAB, num_threads=1, character_coverage=0.98)))
    cfg = PrepareConfig(tokenizer=model, seq_len=SEQ_LEN, batch_size=64, rows_per_shard=1000, val=VAL, fim=FIM,
                        sources={name: [str(tmp / "curated" / name)] for name in (*SOURCES, "tiny")})
    summary = prepare(cfg, str(tmp / "tokens"))
    return {"root": tmp, "tokens": tmp / "tokens", "files": files, "model": model, "summary": summary}
