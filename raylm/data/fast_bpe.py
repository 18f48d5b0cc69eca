"""A faster encoder for raylm's SentencePiece BPE models: kitoken (Rust), only where its ids are SentencePiece's.

SentencePiece stays the reference. ``kitoken`` (BSD-2, on PyPI) reads the same ``.model``
file and, on 100 MB of Korean+English text, encodes it in about 0.4x of SentencePiece's CPU
time with identical ids (``benchmarks/prepare_speed.py`` records both). Its ids are identical
only for the models it was checked on, so ``load_fast_encoder`` returns None (use
SentencePiece) unless all of these hold:

* ``kitoken`` is installed;
* the model is what ``raylm.data.tokenizer.train_from_iterator`` writes: BPE with byte
  fallback, identity normalisation, no extra-whitespace removal, a dummy ``▁`` prefix, spaces
  escaped to ``▁``, pieces split at whitespace. (On a Unigram model, or BPE without byte
  fallback, kitoken's ids differ from SentencePiece's on most documents.);
* its ids equal SentencePiece's on ``PROBES``: Korean, CJK, emoji, byte-fallback
  characters, runs of spaces, tabs, newlines, control characters, the text of user-defined
  and control pieces.

``FastEncoder.encode_flat`` also re-encodes one document of every batch with SentencePiece;
on a difference it warns, encodes that batch and every later one with SentencePiece, and counts
it in ``fallbacks``.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PROBES = [
    "", " ", "a", "  a  b   ", "\t\tindent\n\n  x", "a\nb\n\n c\r\n",
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "漢字かなカナ、中文简体與繁體。", "\u3000全角スペース", "😀🙂 emoji 👩‍👩‍👧 🇰🇷", "𝔘𝔫𝔦 ꙮ 龘 \U0010fffd",
    "\x00\x01\x7f control", "e\u0301 ﬁ ①② Ⅻ", "<mask> x<mask>y <fim_prefix>a<fim_suffix>b<fim_middle>",
    "<eos><bos><pad><unk>", "1234567890 3.14159 1,000,000", "def f(x):\n    return x  # comment\n",
]
"""Texts on which a model's kitoken ids must equal SentencePiece's before kitoken is used."""


def not_exact_reason(model_path: str | Path) -> str | None:
    """Why kitoken's ids may differ from SentencePiece's on the model at ``model_path`` (a
    setting kitoken was not checked on), or None when the model is of the kind it was checked on."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(Path(model_path).read_bytes())
    spec, norm = m.trainer_spec, m.normalizer_spec
    checks = {
        "model_type is not BPE": spec.model_type != pb.TrainerSpec.BPE,
        "byte_fallback is off": not spec.byte_fallback,
        "normalization is not identity": bool(norm.precompiled_charsmap) or norm.name not in ("identity", ""),
        "remove_extra_whitespaces is on": norm.remove_extra_whitespaces,
        "add_dummy_prefix is off": not norm.add_dummy_prefix,
        "escape_whitespaces is off": not norm.escape_whitespaces,
        "treat_whitespace_as_suffix is on": spec.treat_whitespace_as_suffix,
        "split_by_whitespace is off": not spec.split_by_whitespace,
        "the model has unused pieces": any(p.type == pb.ModelProto.SentencePiece.UNUSED for p in m.pieces),
    }
    return next((reason for reason, bad in checks.items() if bad), None)


class FastEncoder:
    """kitoken's encoder for one model, with SentencePiece (``sp``) to check and fall back to."""

    def __init__(self, kit: Any, sp: Any) -> None:
        self.kit, self.sp = kit, sp
        self.fallbacks = 0
        """Batches found to differ from SentencePiece (after the first, all batches use it)."""

    def encode_flat(self, texts: list[str], add_bos: bool, add_eos: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """``(flat int32 ids, lengths)`` of a batch, or None once a check has failed (the
        caller then encodes with SentencePiece)."""
        if self.fallbacks:
            return None
        try:
            ids = [self.kit.encode(t) for t in texts]
        except Exception:  # kitoken found no ids for a text: SentencePiece encodes it
            ids = None
        probe = next((i for i, t in enumerate(texts) if t), None)
        if ids is None or (probe is not None and ids[probe] != self.sp.encode(texts[probe])):
            self.fallbacks += 1
            log.warning("kitoken's ids differ from SentencePiece's on a document; SentencePiece encodes from now on")
            return None
        for x in ids:  # the lists are kitoken's own, fresh per call
            if add_bos:
                x.insert(0, self.sp.bos_id())
            if add_eos:
                x.append(self.sp.eos_id())
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths


def load_fast_encoder(model_path: str | Path, sp: Any) -> tuple[FastEncoder | None, str]:
    """``(encoder, why)``: kitoken for ``model_path`` when its ids are SentencePiece's (see the
    module docstring), else ``(None, the reason)``. ``sp`` is the model's SentencePieceProcessor."""
    try:
        from kitoken import Kitoken
    except ImportError:
        return None, "kitoken is not installed"
    reason = not_exact_reason(model_path)
    if reason:
        return None, reason
    try:
        kit = Kitoken.from_sentencepiece_file(str(model_path))
        same = all(kit.encode(t) == sp.encode(t) for t in PROBES)
    except Exception as exc:  # kitoken cannot read or encode with this model
        return None, f"kitoken failed on the model: {exc}"
    if not same:
        return None, "kitoken's ids differ from SentencePiece's on the probe texts"
    return FastEncoder(kit, sp), "kitoken"
