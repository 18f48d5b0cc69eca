"""``raylm prepare`` against sentencepiece's own multi-threaded batch encode of the same texts.

The corpus is real text (konlpy's Korean constitution and bills, the English of Python's
``pydoc_data.topics``) cut into paragraphs and re-assembled at random into documents of 2-8 KB,
about half Korean and half English by bytes (~100 MB by default), written to Parquet files with
a ``text`` column, as ``raylm curate`` leaves them. A BPE tokenizer is trained on the same real
text (``raylm.data.tokenizer.train_from_iterator``, raylm's settings).

* baseline: ``sp.encode(texts[i:i + 512], num_threads=CPUS, add_eos=True)`` over all documents,
  in one process (the texts already in memory).
* raylm: the real ``raylm.data.prepare.prepare`` with its defaults (seq_len 2048), Ray not
  running when it is called and started by it with ``num_cpus=CPUS``: Ray start-up, reading
  the Parquet, tokenising, packing and writing the shards and manifest. Ray is shut down after
  every repeat, so every repeat pays the start-up again.

The two alternate, ``--repeats`` times each. ``ratio = baseline wall / prepare wall`` per
repeat pair; the JSON records every repeat, the best and the median, and checks that prepare's
document tokens equal the baseline's. Also recorded: a bare ``ray.init``/``shutdown`` (what the
start-up alone costs), the single-thread CPU seconds of the encoders on the whole corpus
(sentencepiece; kitoken, which prepare uses, ``raylm.data.fast_bpe``; a Hugging Face
``tokenizers`` BPE built from the same model) with whether each one's ids equal
sentencepiece's on every document, and the packing waste on the shipped corpus
(``data/sample``).

    python benchmarks/prepare_speed.py [--mb 100] [--cpus 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import cpu_model  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def konlpy_corpus() -> Path:
    """konlpy's ``data/corpus`` folder, found through the installed package (as tests/corpora.py)."""
    spec = importlib.util.find_spec("konlpy")
    if not spec or not spec.origin:
        raise SystemExit("konlpy is not installed (pip install '.[dev]'): its corpora are the Korean text")
    return Path(spec.origin).parent / "data" / "corpus"


def real_paragraphs() -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    def paras(text: str) -> list[str]:
        return [p.strip("\n") for p in text.split("\n\n") if p.strip()]

    corpus = konlpy_corpus()
    ko = paras((corpus / "kolaw/constitution.txt").read_text(encoding="utf-8"))
    for p in sorted((corpus / "kobill").glob("*.txt")):
        ko += paras(p.read_text(encoding="utf-8"))
    en = [p for v in topics.values() for p in paras(v)]
    return {"ko": ko, "en": en}


def build_corpus(paras: dict[str, list[str]], mb: float, seed: int = 0) -> list[str]:
    """Documents of 2-8 KB, each from one language's shuffled paragraphs, ~half Korean bytes."""
    rng = random.Random(seed)
    docs: list[str] = []
    size = {"ko": 0, "en": 0}
    target = mb * 1e6
    while size["ko"] + size["en"] < target:
        lang = "ko" if size["ko"] <= size["en"] else "en"
        want = rng.randint(2000, 8000)
        parts, n = [], 0
        while n < want:
            p = rng.choice(paras[lang])
            parts.append(p)
            n += len(p.encode("utf-8")) + 2
        doc = "\n\n".join(parts)
        docs.append(doc)
        size[lang] += len(doc.encode("utf-8"))
    rng.shuffle(docs)
    return docs


def write_parquet(docs: list[str], folder: Path, files: int) -> None:
    """``files`` Parquet files of consecutive documents, with the columns ``raylm curate`` writes."""
    folder.mkdir(parents=True)
    per = -(-len(docs) // files)
    for f in range(files):
        chunk = docs[f * per:(f + 1) * per]
        pq.write_table(pa.table({"id": [f"doc-{f}-{i}" for i in range(len(chunk))],
                                 "text": pa.array(chunk, pa.large_string()),
                                 "source": ["bench"] * len(chunk)}), folder / f"part-{f:03d}.parquet")


def run_baseline(model: str, docs: list[str], cpus: int, batch: int) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(docs), batch):
        tokens += sum(map(len, sp.encode(docs[i:i + batch], add_eos=True, num_threads=cpus)))
    return {"wall_s": time.perf_counter() - t0, "tokens": tokens}


def run_prepare(model: str, corpus: Path, out: Path, cpus: int) -> dict:
    import ray

    from raylm.cluster import RayConfig
    from raylm.data.prepare import PrepareConfig, prepare

    assert not ray.is_initialized()
    cfg = PrepareConfig(tokenizer=model, sources={"bench": [str(corpus)]}, ray=RayConfig(num_cpus=cpus))
    t0 = time.perf_counter()
    summary = prepare(cfg, str(out), overwrite=True)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"wall_s": wall, "document_tokens": summary["sources"]["bench"]["document_tokens"],
            "num_sequences": summary["sources"]["bench"]["num_sequences"],
            "waste_fraction": summary["sources"]["bench"]["waste_fraction"]}


def ray_start_only(cpus: int) -> float:
    import ray

    from raylm.cluster import RayConfig, ensure_ray

    t0 = time.perf_counter()
    ensure_ray(RayConfig(num_cpus=cpus))
    wall = time.perf_counter() - t0
    ray.shutdown()
    return wall


def rust_bpe(model: str):
    """A Hugging Face ``tokenizers`` BPE with sentencepiece's pieces, merges ranked by the merged
    piece's score, byte fallback, no pre-tokenizer (sentencepiece's BPE merges over the whole
    text too); the caller writes ``"▁" + text.replace(" ", "▁")`` (add_dummy_prefix, escaped
    spaces) itself, which costs less than the equivalent ``tokenizers`` normalizers."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import Tokenizer, models

    m = pb.ModelProto()
    m.ParseFromString(Path(model).read_bytes())
    kinds = pb.ModelProto.SentencePiece
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    mergeable = {p.piece for p in m.pieces if p.type in (kinds.NORMAL, kinds.USER_DEFINED)}
    normal = sorted((-p.score, i, p.piece) for i, p in enumerate(m.pieces) if p.type == kinds.NORMAL and len(p.piece) > 1)
    merges = [(piece[:k], piece[k:]) for _, _, piece in normal for k in range(1, len(piece))
              if piece[:k] in mergeable and piece[k:] in mergeable]
    return Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=False))


def encoder_cpu(model: str, docs: list[str], batch: int) -> dict:
    """Single-thread CPU seconds of sentencepiece, of kitoken (what ``raylm prepare`` encodes
    with, ``raylm.data.fast_bpe``) and of a Hugging Face ``tokenizers`` BPE (``rust_bpe``) on
    ``docs``, and whether each one's ids equal sentencepiece's on every document."""
    import sentencepiece as spm
    from kitoken import Kitoken

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, as one actor has
    sp = spm.SentencePieceProcessor(model_file=model)
    kit = Kitoken.from_sentencepiece_file(model)
    hf = rust_bpe(model)
    cpu = {"sentencepiece": 0.0, "kitoken": 0.0, "hf_tokenizers": 0.0}
    same = {"kitoken": True, "hf_tokenizers": True}
    for i in range(0, len(docs), batch):
        chunk = docs[i:i + batch]
        t = time.process_time()
        want = sp.encode(chunk, out_type="numpy")
        cpu["sentencepiece"] += time.process_time() - t
        t = time.process_time()
        got = {"kitoken": [kit.encode(d) for d in chunk]}
        cpu["kitoken"] += time.process_time() - t
        t = time.process_time()
        got["hf_tokenizers"] = [e.ids for e in hf.encode_batch_fast(["▁" + d.replace(" ", "▁") if d else d for d in chunk],
                                                                      add_special_tokens=False)]
        cpu["hf_tokenizers"] += time.process_time() - t
        for name, ids in got.items():
            same[name] = same[name] and all(np.array_equal(a, b) for a, b in zip(want, ids))
    return {"cpu_s": {k: round(v, 3) for k, v in cpu.items()}, "ids_identical_to_sentencepiece": same}


def pack_waste_on_sample(model: str, seq_len: int) -> dict:
    """The packer's waste on the shipped corpus (``data/sample``): its documents tokenised with
    ``model`` plus eos, packed as one stream (one input file is one packing unit in
    ``raylm prepare``), the incomplete last sequence dropped."""
    import gzip

    from raylm.data.packing import PackConfig, Packer
    from raylm.data.tokenizer import load_tokenizer

    sp = load_tokenizer(model)
    with gzip.open(ROOT / "data/sample/corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    packer = Packer(PackConfig(seq_len=seq_len))
    packer.add([np.asarray(sp.encode(t, add_eos=True), np.int32) for t in docs])
    packer.flush()
    st = packer.stats
    return {"documents": len(docs), "tokens": st.tokens_in, "seq_len": seq_len, "sequences": st.sequences,
            "dropped_tokens": st.dropped, "padded_tokens": st.padded, "waste_fraction": round(st.waste_fraction, 5)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=100.0)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--cpus", type=int, default=2, help="baseline threads and Ray's num_cpus")
    ap.add_argument("--files", type=int, default=8, help="Parquet files the corpus is written to")
    ap.add_argument("--batch", type=int, default=512, help="texts per baseline encode call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=2048, help="packing length for pack_waste")
    ap.add_argument("--out", default=str(HERE / "results" / "prepare_speed.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    import ray  # noqa: F401  (imported before any timing, as the CLI has it imported)

    import raylm.data.prepare  # noqa: F401
    from raylm.data.tokenizer import TokenizerConfig, detect_script, train_from_iterator

    paras = real_paragraphs()
    docs = build_corpus(paras, args.mb)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    mb = n_bytes / 1e6
    ko_share = sum(len(d.encode("utf-8")) for d in docs if detect_script(d) == "ko") / n_bytes
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_parquet(docs, tmp / "corpus", args.files)
        lines = [line for lang in ("ko", "en") for p in paras[lang] for line in p.split("\n") if line.strip()]
        model = str(train_from_iterator(lines, str(tmp / "tok"),
                                        TokenizerConfig(vocab_size=args.vocab_size, num_threads=args.cpus)))
        print(f"corpus: {len(docs)} docs, {mb:.1f} MB ({ko_share:.0%} Korean bytes) in {args.files} files; "
              f"bpe {args.vocab_size}", flush=True)
        base, ours = [], []
        for r in range(args.repeats):
            base.append(run_baseline(model, docs, args.cpus, args.batch))
            ours.append(run_prepare(model, tmp / "corpus", tmp / "out", args.cpus))
            print(f"repeat {r}: sentencepiece batch encode {base[-1]['wall_s']:.2f}s, raylm prepare "
                  f"{ours[-1]['wall_s']:.2f}s, ratio {base[-1]['wall_s'] / ours[-1]['wall_s']:.3f}", flush=True)
            if ours[-1]["document_tokens"] != base[-1]["tokens"]:
                raise SystemExit(f"token counts differ: prepare {ours[-1]['document_tokens']} vs "
                                 f"sentencepiece {base[-1]['tokens']}")
        ray_init = [ray_start_only(args.cpus) for _ in range(args.repeats)]
        print(f"ray start-up alone: {min(ray_init):.2f}s best", flush=True)
        enc = encoder_cpu(model, docs, args.batch)
        print(f"one thread, CPU seconds: {enc['cpu_s']}; ids identical: {enc['ids_identical_to_sentencepiece']}",
              flush=True)
        waste = pack_waste_on_sample(model, args.seq_len)
    ratios = [b["wall_s"] / o["wall_s"] for b, o in zip(base, ours)]
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"{cpu_model()}, {os.cpu_count()} cores (CPU only)",
        "cpus": args.cpus,
        "corpus_mb": round(mb, 2),
        "corpus_docs": len(docs),
        "corpus_files": args.files,
        "korean_byte_share": round(ko_share, 3),
        "tokens": base[0]["tokens"],
        "tokenizer": {"model_type": "bpe", "vocab_size": args.vocab_size},
        "baseline": f"sp.encode(texts, num_threads={args.cpus}, add_eos=True), {args.batch} texts a call",
        "baseline_wall_s": [round(b["wall_s"], 3) for b in base],
        "prepare_wall_s": [round(o["wall_s"], 3) for o in ours],
        "ratio_per_repeat": [round(x, 3) for x in ratios],
        "ratio_best": round(max(ratios), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_of_best_walls": round(min(b["wall_s"] for b in base) / min(o["wall_s"] for o in ours), 3),
        "ray_start_only_s": [round(x, 3) for x in ray_init],
        "prepare_sequences": ours[0]["num_sequences"],
        "prepare_waste_fraction": round(ours[0]["waste_fraction"], 6),
        "encoder_cpu": enc,
        "pack_waste": waste["waste_fraction"],
        "pack_waste_detail": waste,
        "targets": {"ratio": ">= 0.85", "pack_waste": "< 0.005"},
        "notes": ("ratio = baseline wall / prepare wall, each repeat pair run back to back; prepare's wall is the "
                  "prepare() call with Ray not running (start-up, read, tokenise, pack, write, manifest), "
                  "imports done before; encoder_cpu: one thread, process CPU seconds over the whole corpus."),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
