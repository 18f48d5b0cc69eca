"""The shipped sample corpus (data/sample/, real English and Korean text) as packed token
shards for the μP benchmarks: a 1024-piece BPE trained on it, documents in a fixed random
order packed into ``seq_len``-token sequences, one Parquet file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylm.data.packing import PackConfig, Packer
from raylm.data.tokenizer import TokenizerConfig, load_tokenizer, train_from_iterator

SAMPLE = Path(__file__).resolve().parents[1] / "data/sample/corpus.jsonl.gz"
VOCAB = 1024


def sample_shards(out: Path, seq_len: int) -> str:
    """Write (once) and return the token-shard folder under ``out``."""
    folder = out / f"tokens-{seq_len}"
    if (folder / "shard-00000.parquet").exists():
        return str(folder)
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    lines = [x for d in docs for x in d.splitlines() if x.strip()]
    out.mkdir(parents=True, exist_ok=True)
    model = train_from_iterator(lines, str(out / "tok"),
                                TokenizerConfig(vocab_size=VOCAB, num_threads=1, character_coverage=0.98))
    sp = load_tokenizer(str(model))
    order = np.random.default_rng(0).permutation(len(docs))
    packer = Packer(PackConfig(seq_len=seq_len))
    seqs = packer.add([np.asarray(sp.encode(docs[i], add_eos=True), np.int32) for i in order]) + packer.flush()
    table = pa.table({
        "seq_id": pa.array(np.arange(len(seqs), dtype=np.int64)),
        "tokens": pa.array([s.tokens.tolist() for s in seqs], pa.list_(pa.int32())),
        "cu_seqlens": pa.array([s.cu_seqlens.tolist() for s in seqs], pa.list_(pa.int32())),
    })
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "shard-00000.parquet", row_group_size=256)
    return str(folder)
