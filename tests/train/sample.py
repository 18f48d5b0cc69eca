"""The shipped sample corpus made ready for the training tests, in two forms.

- ``pack_shards``: the first 60 documents tokenised and packed into 64-token sequences, one
  Parquet folder (session fixture ``shards`` in ``tests/conftest.py``), with ``config`` for a
  small run on it; the session fixture ``reference_runs`` trains it once with 1 worker, 2-worker
  DDP and 2-worker FSDP2, the runs other tests must follow.
- ``prepare_sample``: two sources that each mix English and Korean documents (``books``: Austen
  and the Korean constitution; ``web``: Bierce and Korean bills) and a one-document source,
  through ``raylm prepare`` with a held-out split and FIM (session fixture ``prepared``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylm.data.packing import PackConfig, Packer
from raylm.data.prepare import HeldOutConfig, PrepareConfig, held_out, prepare
from raylm.data.tokenizer import TokenizerConfig, load_tokenizer, train_from_iterator
from raylm.data.transforms import FIMConfig
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import run_dir

SAMPLE = Path(__file__).parents[2] / "data/sample/corpus.jsonl.gz"
SEQ_LEN, VOCAB, STEPS = 64, 1024, 8
SOURCES = {"books": ("gutenberg-105", "kolaw"), "web": ("devils-dictionary", "kobill")}
VAL = HeldOutConfig(fraction=0.15, seed=1)
FIM = FIMConfig(rate=0.5, spm_rate=0.5, seed=2)


def pack_shards(tmp: Path) -> str:
    """The first 60 sample documents, tokenised (a 1024-piece BPE trained on them) and packed into
    64-token sequences with dense seq_ids, 256 of them in one Parquet file; returns its folder."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f][:60]
    lines = [x for d in docs for x in d.splitlines() if x.strip()]
    model = train_from_iterator(lines, str(tmp / "tok"), TokenizerConfig(vocab_size=VOCAB, num_threads=1,
                                                                         character_coverage=0.98))
    sp = load_tokenizer(str(model))
    packer = Packer(PackConfig(seq_len=SEQ_LEN))
    seqs = (packer.add([np.asarray(sp.encode(d, add_eos=True), np.int32) for d in docs]) + packer.flush())[:256]
    table = pa.table({
        "seq_id": pa.array(np.arange(len(seqs), dtype=np.int64)),
        "tokens": pa.array([s.tokens.tolist() for s in seqs], pa.list_(pa.int32())),
        "cu_seqlens": pa.array([s.cu_seqlens.tolist() for s in seqs], pa.list_(pa.int32())),
    })
    (tmp / "data").mkdir()
    pq.write_table(table, tmp / "data" / "shard-00000.parquet", row_group_size=64)
    return str(tmp / "data")


def config(shards: str, storage: Path, name: str, workers: int, **kw) -> dict:
    """A ``STEPS``-step run of the debug model on ``shards``, global batch 8 over ``workers``,
    checkpoints every 3 steps; ``kw`` sets dotted keys (``"scale.strategy": "fsdp2"``)."""
    base = {
        "name": name, "storage_path": str(storage), "steps": STEPS, "log_every": 1, "seed": 3,
        "model": {"flavor": "debug", "vocab_size": VOCAB, "max_seq_len": SEQ_LEN, "attention": "sdpa"},
        "data": {"path": shards, "window": 64, "prefetch": 1},
        "optim": {"lr": 3e-3, "schedule": {"name": "cosine", "warmup_steps": 2}},
        "micro_batch_size": 8 // workers, "grad_accum": 1,
        "scale": {"num_workers": workers, "cpus_per_worker": 0.5},
        "checkpoint": {"every": 3, "keep": 2},
        "tensorboard": True,
    }
    return with_keys(base, kw)


def with_keys(base: dict, kw: dict) -> dict:
    """``base`` with each dotted key of ``kw`` (``"scale.strategy"``) set, in place; returns it."""
    for key, value in kw.items():
        node = base
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return base


# the session's reference runs on ``shards`` (fixture ``reference_runs``): name -> (workers, overrides)
REFERENCE_RUNS = {"one": (1, {}), "ddp": (2, {"log_seq_ids": True}), "fsdp": (2, {"scale.strategy": "fsdp2"})}


def losses(cfg_dict: dict) -> list[float]:
    return [row["loss"] for row in read_metrics(run_dir(train_config(cfg_dict)))]


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
