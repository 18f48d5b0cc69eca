"""Train a SentencePiece tokenizer on a curated corpus with Ray Data, and measure it.

The corpus (curated Parquet folders, Parquet files, JSONL) is read as a Ray Data dataset.
Each document gets a deterministic uniform number from a hash of its id (of its text when
there is no id column) and the seed; that number alone decides whether the document is in
the training sample (about ``sample_docs`` documents), in the held-out slice
(``heldout_fraction`` of the corpus, never trained on) or in neither. The split runs on the
cluster, so only the sampled documents travel to the driver, batch by batch, straight into
``SentencePieceTrainer`` (which trains from an iterator; no temp file).

The vocabulary is byte-level complete (``byte_fallback``) and lossless: no normalisation, no
whitespace folding, so ``decode(encode(text)) == text`` for any text, emoji and rare Hanja
included. Special tokens have fixed ids 0..7 (``SPECIAL_TOKENS``).

The report gives fertility per language on the held-out slice: tokens per whitespace word
and tokens per character, the language from the ``lang`` column (the langid step) or, where
it is missing, from the dominant script (Hangul -> ``ko``, Latin -> ``en``, Han/Kana ->
``zh/ja``, else ``other``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from raylm import console
from raylm.config import ConfigError, to_dict
from raylm.data.corpus import read_parquet_v1, sort_inputs, uniform
from raylm.storage import InputError

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>"]
"""Special pieces with fixed ids: the position in this list is the id."""

PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
_ID_COLUMN = "id"
_LANG_COLUMN = "lang"
_MAX_EVAL_DOCS = 20_000  # held-out documents encoded on the driver for the fertility report
_SCRIPT_CHARS = 2000  # characters looked at to guess the script of a document
_HANGUL_RE = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
_HAN_KANA_RE = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3040-\u30ff]")


class TokenizerError(ValueError):
    """The corpus cannot give a tokenizer with this config (too small, empty, unreadable)."""


@dataclasses.dataclass(kw_only=True)
class TokenizerConfig:
    model_type: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece algorithm."""
    vocab_size: int = 8000
    """Pieces in the vocabulary, the 8 special tokens and 256 byte pieces included."""
    byte_fallback: bool = True
    """Encode characters outside the vocabulary as UTF-8 byte pieces (no ``<unk>``)."""
    character_coverage: float = 0.9995
    """Share of characters covered by single-character pieces; 0.9995 suits Korean/CJK."""
    sample_docs: int = 200_000
    """Documents in the uniform training sample (all non-held-out ones if fewer)."""
    max_sentence_length: int = 16384
    """Longest training sentence in bytes; longer lines are cut into pieces this long."""
    seed: int = 0
    """Seed of the sample/held-out split and of SentencePiece's trainer."""
    heldout_fraction: float = 0.05
    """Share of the corpus kept out of training and used for the fertility report."""
    text_field: str = "text"
    """Column (Parquet) or field (JSONL) with the text."""
    num_threads: int = 2
    """Threads of SentencePiece's trainer on the driver."""

    def validate(self) -> None:
        if self.model_type not in ("bpe", "unigram"):
            raise ConfigError(f"model_type: {self.model_type!r} is not one of ['bpe', 'unigram']")
        min_vocab = len(SPECIAL_TOKENS) + (256 if self.byte_fallback else 0) + 1
        if self.vocab_size < min_vocab:
            raise ConfigError(
                f"vocab_size: {self.vocab_size} is too small; it must be at least {min_vocab} "
                f"({len(SPECIAL_TOKENS)} special tokens{' + 256 byte pieces' if self.byte_fallback else ''} + 1)")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ConfigError(f"character_coverage: {self.character_coverage} is not between 0.9 and 1")
        if self.sample_docs < 1:
            raise ConfigError(f"sample_docs: {self.sample_docs} must be at least 1")
        if self.max_sentence_length < 64:
            raise ConfigError(f"max_sentence_length: {self.max_sentence_length} must be at least 64 bytes")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise ConfigError(f"heldout_fraction: {self.heldout_fraction} is not in [0, 0.5)")
        if not self.text_field:
            raise ConfigError("text_field: must not be empty")
        if self.num_threads < 1:
            raise ConfigError(f"num_threads: {self.num_threads} must be at least 1")


def special_ids(sp: Any) -> dict[str, int]:
    """``{piece: id}`` of the special tokens in ``sp`` (a SentencePieceProcessor)."""
    return {piece: sp.piece_to_id(piece) for piece in SPECIAL_TOKENS}


def load_tokenizer(path: str | os.PathLike):
    """A ``sentencepiece.SentencePieceProcessor`` for the ``.model`` file at ``path``."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer model not found: {path}")
    return spm.SentencePieceProcessor(model_file=str(path))


def tokenizer_hash(path: str | os.PathLike) -> str:
    """sha256 of the model file, first 16 hex digits: names the tokenizer in caches/checkpoints."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def detect_script(text: str) -> str:
    """``ko``, ``en``, ``zh/ja`` or ``other`` by the dominant script of the first characters."""
    head = text[:_SCRIPT_CHARS]
    counts = {
        "ko": len(_HANGUL_RE.findall(head)),
        "en": len(_LATIN_RE.findall(head)),
        "zh/ja": len(_HAN_KANA_RE.findall(head)),
    }
    best = max(counts, key=counts.get)
    return best if counts[best] else "other"


# --------------------------------------------------------------------------- reading


def _read_corpus(inputs: list[str], text_field: str):
    """One Ray dataset of the text column, plus ``id`` and ``lang`` where the corpus has them."""
    import ray

    if not inputs:
        raise TokenizerError("no inputs given")
    try:
        parquet, jsonl = sort_inputs(inputs)
    except InputError as exc:
        raise TokenizerError(str(exc)) from None
    parts = []
    if parquet:
        parts.append(read_parquet_v1(parquet))
    if jsonl:
        parts.append(ray.data.read_json(jsonl))
    for i, part in enumerate(parts):
        names = part.schema().names
        if text_field not in names:
            raise TokenizerError(f"the corpus has no {text_field!r} column (columns: {', '.join(names)})")
        cols = [text_field] + [c for c in (_ID_COLUMN, _LANG_COLUMN) if c in names and c != text_field]
        parts[i] = part.select_columns(cols)
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _split_batch(batch: pa.Table, text_field: str, seed: int, heldout: float, train_p: float,
                 eval_p: float) -> pa.Table:
    """Keep the training sample (``part`` 0) and the evaluated held-out docs (``part`` 1)."""
    key_col = _ID_COLUMN if _ID_COLUMN in batch.column_names else text_field
    u = uniform(batch.column(key_col).to_pylist(), seed)
    part = np.full(len(u), -1, dtype=np.int8)
    part[u < heldout * eval_p] = 1
    train = (u >= heldout) & ((u - heldout) < (1.0 - heldout) * train_p)
    part[train] = 0
    keep = np.flatnonzero(part >= 0)
    texts = batch.column(text_field).take(pa.array(keep)).cast(pa.large_string())
    langs = (batch.column(_LANG_COLUMN).take(pa.array(keep)).cast(pa.string())
             if _LANG_COLUMN in batch.column_names else pa.nulls(len(keep), pa.string()))
    return pa.table({"text": texts, "lang": langs, "part": pa.array(part[keep])})


def _chunks(text: str, max_bytes: int) -> Iterator[str]:
    """Training sentences: the non-empty lines, long ones cut to at most ``max_bytes`` bytes."""
    step = max(1, max_bytes // 4)  # a character is at most 4 UTF-8 bytes
    for line in text.split("\n"):
        if not line.strip():
            continue
        if len(line) <= step or len(line.encode("utf-8", "surrogatepass")) <= max_bytes:
            yield line
        else:
            for i in range(0, len(line), step):
                yield line[i:i + step]


# --------------------------------------------------------------------------- training


def train_tokenizer(inputs: list[str], out_prefix: str, cfg: TokenizerConfig | None = None,
                    baselines: dict[str, str] | None = None) -> dict[str, Any]:
    """Train on a uniform sample of ``inputs``; write ``out_prefix.{model,vocab,report.json}``.

    ``inputs`` are curated output folders (their ``data/`` is read), Parquet folders/files or
    JSONL files. Ray must be initialised (``raylm.cluster.ensure_ray``) or is started
    locally. ``baselines`` (name -> ``.model`` path) are other tokenizers measured on the same
    held-out documents (``baseline_fertility`` in the report), e.g. an English-only one on a
    Korean corpus. Returns the report (also written to ``out_prefix.report.json``)."""
    import ray

    cfg = cfg or TokenizerConfig()
    cfg.validate()
    baseline_sps = {name: load_tokenizer(path) for name, path in (baselines or {}).items()}  # missing: fail now
    if not ray.is_initialized():
        from raylm.cluster import RayConfig, ensure_ray

        ensure_ray(RayConfig())
    t0 = time.perf_counter()
    ds = _read_corpus(list(inputs), cfg.text_field)
    n_total = ds.count()
    if n_total == 0:
        raise TokenizerError(f"the corpus {inputs} has no documents")
    n_pool = n_total * (1.0 - cfg.heldout_fraction)
    train_p = min(1.0, cfg.sample_docs / n_pool) if n_pool else 0.0
    n_held = n_total * cfg.heldout_fraction
    eval_p = min(1.0, _MAX_EVAL_DOCS / n_held) if n_held else 0.0
    ds = ds.map_batches(_split_batch, batch_format="pyarrow", zero_copy_batch=True,
                        fn_kwargs={"text_field": cfg.text_field, "seed": cfg.seed,
                                   "heldout": cfg.heldout_fraction, "train_p": train_p, "eval_p": eval_p})

    held: list[tuple[str, str | None]] = []
    seen = {"docs": 0, "chars": 0, "sentences": 0}

    progress = console.stage("tokenizer", unit="doc")

    def sentences() -> Iterator[str]:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=1024):
            parts = batch.column("part").to_numpy()
            texts = batch.column("text").to_pylist()
            langs = batch.column("lang").to_pylist()
            for text, lang, part in zip(texts, langs, parts):
                if text is None:
                    continue
                if part == 1:
                    held.append((text, lang))
                    continue
                seen["docs"] += 1
                seen["chars"] += len(text)
                progress.advance(1, docs=1, bytes=len(text.encode()))
                for s in _chunks(text, cfg.max_sentence_length):
                    seen["sentences"] += 1
                    yield s
        progress.phase(f"training a {cfg.vocab_size}-piece {cfg.model_type} model")

    out = Path(out_prefix)
    try:
        with progress:
            train_from_iterator(sentences(), out_prefix, cfg)
            progress.done(f"{cfg.model_type}, {cfg.vocab_size} pieces from {seen['docs']} docs")
    except RuntimeError as exc:
        if seen["docs"] == 0:
            raise TokenizerError(
                f"no documents to train on: the sample of {n_total} documents is empty "
                f"(heldout_fraction={cfg.heldout_fraction})") from None
        raise TokenizerError(
            f"sentencepiece could not train a {cfg.model_type} vocabulary of {cfg.vocab_size} on "
            f"{seen['docs']} documents ({seen['chars']} characters): {exc}. Give it more text or "
            f"lower vocab_size.") from None
    model_path = out.with_name(out.name + ".model")
    sp = load_tokenizer(model_path)
    ids = special_ids(sp)
    if ids != {piece: i for i, piece in enumerate(SPECIAL_TOKENS)}:
        raise RuntimeError(f"special token ids are {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    if cfg.heldout_fraction > 0 and not held:
        raise TokenizerError(
            f"the held-out slice is empty: {n_total} documents x heldout_fraction="
            f"{cfg.heldout_fraction} gives none to measure on; give it more documents or set "
            f"heldout_fraction to 0")
    report = {
        "model": str(model_path),
        "tokenizer_hash": tokenizer_hash(model_path),
        "model_type": cfg.model_type,
        "vocab_size": sp.get_piece_size(),
        "special_ids": ids,
        "documents_in": n_total,
        "train_docs": seen["docs"],
        "train_chars": seen["chars"],
        "train_sentences": seen["sentences"],
        "heldout_docs_evaluated": len(held),
        "fertility": fertility(sp, [t for t, _ in held], [lang for _, lang in held]),
        "baseline_fertility": {name: fertility(base, [t for t, _ in held], [lang for _, lang in held])
                               for name, base in baseline_sps.items()},
        "seconds": round(time.perf_counter() - t0, 3),
        "config": to_dict(cfg),
        "inputs": list(inputs),
    }
    report_path = out.with_name(out.name + ".report.json")
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def train_from_iterator(sentences: Iterable[str], out_prefix: str, cfg: TokenizerConfig) -> Path:
    """Train SentencePiece on ``sentences`` (lines, no newlines) with raylm's fixed special
    ids and lossless settings; writes ``out_prefix.model``/``.vocab`` and returns the model
    path. Raises sentencepiece's ``RuntimeError`` when the text cannot give the vocabulary."""
    import sentencepiece as spm

    out = Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(cfg.seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(out),
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage,
        max_sentence_length=cfg.max_sentence_length,
        num_threads=cfg.num_threads,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        pad_piece=SPECIAL_TOKENS[PAD_ID], bos_piece=SPECIAL_TOKENS[BOS_ID],
        eos_piece=SPECIAL_TOKENS[EOS_ID], unk_piece=SPECIAL_TOKENS[UNK_ID],
        user_defined_symbols=SPECIAL_TOKENS[MASK_ID:],
        normalization_rule_name="identity",  # lossless: no NFKC folding,
        remove_extra_whitespaces=False,  # no whitespace collapsing
        split_digits=True,
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    return out.with_name(out.name + ".model")


def fertility(sp: Any, texts: list[str], langs: list[str | None] | None = None) -> dict[str, dict[str, Any]]:
    """Per language (``lang`` if given, else the script guess) and ``all``: documents,
    characters, whitespace words, tokens, tokens per word and tokens per character."""
    langs = langs or [None] * len(texts)
    acc: dict[str, list[int]] = {}
    encoded = sp.encode(texts, out_type=int) if texts else []
    for text, lang, ids in zip(texts, langs, encoded):
        key = lang or detect_script(text)
        for k in (key, "all"):
            a = acc.setdefault(k, [0, 0, 0, 0])
            a[0] += 1
            a[1] += len(text)
            a[2] += len(text.split())
            a[3] += len(ids)
    return {
        k: {"docs": d, "chars": c, "words": w, "tokens": t,
            "tokens_per_word": round(t / w, 4) if w else None,
            "tokens_per_char": round(t / c, 4) if c else None}
        for k, (d, c, w, t) in sorted(acc.items())
    }
