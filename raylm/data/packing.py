"""Sequence packing: tokenised documents -> fixed-length training sequences with document boundaries.

Documents are concatenated end to end and cut into sequences of exactly ``seq_len`` tokens, so
no token is padded away in the middle of the stream (the "concat and chunk" packing of GPT-2/3
and T5). Unlike naive chunking, every sequence records where each document segment starts, so
attention can be kept inside a document ("intra-document causal masking", Zhao et al. 2024,
"Analysing The Impact of Sequence Composition on Language Model Pre-Training"; Llama 3): the
``cu_seqlens`` of a sequence is exactly what flash-attn's ``flash_attn_varlen_func`` takes, and
``position_ids`` restart at 0 at every segment (a document continued from the previous sequence
starts a new segment at position 0). A document longer than the space left is split and
continues in the next sequence; nothing is ever dropped except the tail of the final incomplete
sequence when ``drop_tail`` is set (otherwise that sequence is padded with a padding segment
whose ``doc_id`` is -1; its tokens are ``pad_id`` and should be excluded from the loss).

Everything is vectorised over the whole batch of documents: the only Python loop is the one
that slices the packed arrays into ``PackedSeq`` objects (one iteration per sequence).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from raylm.config import ConfigError


@dataclasses.dataclass(kw_only=True)
class PackConfig:
    seq_len: int = 2048
    """Tokens in every packed sequence."""
    drop_tail: bool = True
    """At the end of the stream (``Packer.flush``, or the end of each ``pack_table`` batch),
    drop the tokens of the last incomplete sequence; when false, pad it to ``seq_len`` with
    ``pad_id`` instead. These are the only tokens ever dropped."""
    append_eos: bool = False
    """Append ``eos_id`` to every document before packing; leave false when documents already
    end in eos (the tokeniser added it)."""
    pad_id: int = 0
    """Token id used to pad the final sequence when ``drop_tail`` is false."""
    eos_id: int = 2
    """End-of-document token id, appended when ``append_eos`` is set."""

    def validate(self) -> None:
        if self.seq_len < 1:
            raise ConfigError(f"seq_len: {self.seq_len} must be at least 1")
        for name in ("pad_id", "eos_id"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must not be negative")


@dataclasses.dataclass
class PackedSeq:
    """One packed training sequence."""

    tokens: np.ndarray
    """int32 ``(seq_len,)``."""
    cu_seqlens: np.ndarray
    """int32 ``(num_segments + 1,)``: segment boundaries, from 0 to ``seq_len``."""
    doc_ids: np.ndarray
    """int64 ``(num_segments,)``: index of the source document of each segment (counted over
    everything this packer has seen), -1 for the padding segment."""
    position_ids: np.ndarray
    """int32 ``(seq_len,)``: 0, 1, ... restarting at every segment."""

    @property
    def num_segments(self) -> int:
        return len(self.doc_ids)


@dataclasses.dataclass
class PackStats:
    """Token accounting of a packer; ``waste_fraction`` is the figure to watch."""

    tokens_in: int = 0
    """Document tokens received (including appended eos)."""
    sequences: int = 0
    """Packed sequences emitted."""
    padded: int = 0
    """Pad tokens emitted."""
    dropped: int = 0
    """Document tokens dropped with a final incomplete sequence."""

    @property
    def waste_fraction(self) -> float:
        """(padded + dropped) / (document tokens received + pad tokens emitted)."""
        total = self.tokens_in + self.padded
        return (self.padded + self.dropped) / total if total else 0.0

    def merge(self, other: PackStats) -> None:
        self.tokens_in += other.tokens_in
        self.sequences += other.sequences
        self.padded += other.padded
        self.dropped += other.dropped


class _Packed(NamedTuple):
    """Packed sequences as flat arrays (the form ``pack_table`` writes)."""

    tokens: np.ndarray  # int32 (n, seq_len)
    position_ids: np.ndarray  # int32 (n, seq_len)
    cu_values: np.ndarray  # int32, every sequence's cu_seqlens one after another
    cu_offsets: np.ndarray  # int64 (n + 1,): sequence i's cu_seqlens = cu_values[o[i]:o[i+1]]
    seg_docs: np.ndarray  # int64, every sequence's doc ids one after another
    num_segments: np.ndarray  # int32 (n,)


def _empty_packed(seq_len: int) -> _Packed:
    z = np.zeros((0, seq_len), dtype=np.int32)
    return _Packed(z, z.copy(), np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int64),
                   np.zeros(0, np.int32))  # fmt: skip


def _pack_full(
    tokens: np.ndarray, doc_starts: np.ndarray, seq_len: int, n: int, doc_ids: np.ndarray
) -> _Packed:
    """Pack the first ``n * seq_len`` tokens of a stream whose documents start at ``doc_starts``
    (strictly increasing, ``doc_starts[0] == 0``) and carry ``doc_ids``."""
    if n == 0:
        return _empty_packed(seq_len)
    end = n * seq_len
    in_range = doc_starts < end
    # Segments start where a document starts or where a sequence starts.
    starts = np.union1d(doc_starts[in_range], np.arange(n, dtype=np.int64) * seq_len)
    seg_docs = doc_ids[np.searchsorted(doc_starts, starts, side="right") - 1]
    seg_len = np.diff(np.append(starts, end))
    positions = np.arange(end, dtype=np.int64) - np.repeat(starts, seg_len)
    seq_of_seg = starts // seq_len
    counts = np.bincount(seq_of_seg, minlength=n)
    local = (starts - seq_of_seg * seq_len).astype(np.int32)
    cu_values = np.insert(local, np.cumsum(counts), np.int32(seq_len))
    cu_offsets = np.concatenate(([0], np.cumsum(counts + 1)))
    return _Packed(
        tokens=tokens[:end].reshape(n, seq_len).astype(np.int32, copy=False),
        position_ids=positions.reshape(n, seq_len).astype(np.int32),
        cu_values=cu_values,
        cu_offsets=cu_offsets,
        seg_docs=seg_docs,
        num_segments=counts.astype(np.int32),
    )


def _concat_packed(parts: list[_Packed], seq_len: int) -> _Packed:
    parts = [p for p in parts if len(p.tokens)]
    if not parts:
        return _empty_packed(seq_len)
    if len(parts) == 1:
        return parts[0]
    offsets = [parts[0].cu_offsets]
    base = parts[0].cu_offsets[-1]
    for p in parts[1:]:
        offsets.append(p.cu_offsets[1:] + base)
        base += p.cu_offsets[-1]
    return _Packed(
        tokens=np.concatenate([p.tokens for p in parts]),
        position_ids=np.concatenate([p.position_ids for p in parts]),
        cu_values=np.concatenate([p.cu_values for p in parts]),
        cu_offsets=np.concatenate(offsets),
        seg_docs=np.concatenate([p.seg_docs for p in parts]),
        num_segments=np.concatenate([p.num_segments for p in parts]),
    )


class Packer:
    """Streaming packer: ``add`` documents as they come, ``flush`` at the end of the stream.

    Tokens that do not fill a whole sequence yet are carried to the next ``add`` call, so the
    split points do not depend on how the stream is batched."""

    def __init__(self, cfg: PackConfig | None = None) -> None:
        self.cfg = cfg or PackConfig()
        self.cfg.validate()
        self.stats = PackStats()
        self._next_doc = 0
        self._carry = np.zeros(0, dtype=np.int32)
        self._carry_starts = np.zeros(0, dtype=np.int64)  # segment starts inside the carry
        self._carry_docs = np.zeros(0, dtype=np.int64)

    @property
    def waste_fraction(self) -> float:
        return self.stats.waste_fraction

    @property
    def pending_tokens(self) -> int:
        """Tokens waiting for the next sequence."""
        return len(self._carry)

    def add(self, docs: list[np.ndarray]) -> list[PackedSeq]:
        """Add documents (1-D integer arrays); returns the sequences completed by them."""
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        flat = np.concatenate(docs).astype(np.int32, copy=False) if docs else np.zeros(0, np.int32)
        return _to_seqs(self._push(flat, lengths))

    def flush(self) -> list[PackedSeq]:
        """End of stream: drop or pad the pending tail (see ``PackConfig.drop_tail``)."""
        return _to_seqs(self._flush())

    # --- flat-array core (shared with pack_table) ------------------------------------------

    def _push(self, flat: np.ndarray, lengths: np.ndarray) -> _Packed:
        cfg = self.cfg
        ids = np.arange(self._next_doc, self._next_doc + len(lengths), dtype=np.int64)
        self._next_doc += len(lengths)
        if cfg.append_eos and len(lengths):
            flat = np.insert(flat, np.cumsum(lengths), np.int32(cfg.eos_id))
            lengths = lengths + 1
        keep = lengths > 0  # empty documents take an index but make no segment
        lengths, ids = lengths[keep], ids[keep]
        self.stats.tokens_in += int(lengths.sum())
        carry_len = len(self._carry)
        starts = np.concatenate((self._carry_starts, carry_len + np.cumsum(lengths) - lengths))
        doc_ids = np.concatenate((self._carry_docs, ids))
        stream = np.concatenate((self._carry, flat.astype(np.int32, copy=False)))
        n = len(stream) // cfg.seq_len
        packed = _pack_full(stream, starts, cfg.seq_len, n, doc_ids)
        # What does not fill a sequence is carried; a document cut at the boundary gets a new
        # segment at 0.
        end = n * cfg.seq_len
        self._carry = stream[end:].copy()
        if len(self._carry):
            tail = starts >= end
            first_doc = doc_ids[np.searchsorted(starts, end, side="right") - 1]
            cut = not np.any(starts == end)
            self._carry_starts = np.concatenate(([0] if cut else [], starts[tail] - end)).astype(np.int64)
            self._carry_docs = np.concatenate(([first_doc] if cut else [], doc_ids[tail])).astype(np.int64)
        else:
            self._carry_starts = np.zeros(0, dtype=np.int64)
            self._carry_docs = np.zeros(0, dtype=np.int64)
        self.stats.sequences += n
        return packed

    def _flush(self) -> _Packed:
        cfg = self.cfg
        rest = len(self._carry)
        out = _empty_packed(cfg.seq_len)
        if rest and cfg.drop_tail:
            self.stats.dropped += rest
        elif rest:
            pad = cfg.seq_len - rest
            stream = np.concatenate((self._carry, np.full(pad, cfg.pad_id, dtype=np.int32)))
            starts = np.append(self._carry_starts, rest)
            docs = np.append(self._carry_docs, -1)
            out = _pack_full(stream, starts, cfg.seq_len, 1, docs)
            self.stats.padded += pad
            self.stats.sequences += 1
        self._carry = np.zeros(0, dtype=np.int32)
        self._carry_starts = np.zeros(0, dtype=np.int64)
        self._carry_docs = np.zeros(0, dtype=np.int64)
        return out


def _to_seqs(p: _Packed) -> list[PackedSeq]:
    seg_off = np.concatenate(([0], np.cumsum(p.num_segments)))
    return [
        PackedSeq(
            tokens=p.tokens[i],
            cu_seqlens=p.cu_values[p.cu_offsets[i] : p.cu_offsets[i + 1]],
            doc_ids=p.seg_docs[seg_off[i] : seg_off[i + 1]],
            position_ids=p.position_ids[i],
        )
        for i in range(len(p.tokens))
    ]


def pack_table(table: pa.Table, cfg: PackConfig | None = None, stats: PackStats | None = None, *,
               doc_ids: bool = False) -> pa.Table:
    """Pack a batch with a ``tokens`` list column (for ``ray.data.Dataset.map_batches`` with
    ``batch_format="pyarrow"``) into a table with ``tokens`` (list<int32>, ``seq_len`` each),
    ``cu_seqlens`` (list<int32>) and ``num_segments`` (int32).

    ``map_batches`` cannot carry state from one batch to the next, so each batch is packed on
    its own and its last incomplete sequence is treated as the end of a stream: dropped when
    ``cfg.drop_tail`` (the default), padded otherwise. Either way this costs about
    ``seq_len / 2`` tokens per batch, so batches should hold many sequences' worth of tokens
    (a batch of ~1,000 documents of ~500 tokens wastes ~0.2% at ``seq_len=2048``). Pass
    ``stats`` to accumulate the token accounting. Null documents count as empty. With
    ``doc_ids``, a ``doc_ids`` column (list<int64>) holds every segment's row in ``table``
    (-1 for the padding segment)."""
    cfg = cfg or PackConfig()
    col = table.column("tokens")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise TypeError(f"pack_table: column 'tokens' must be a list of integers, not {arr.type}")
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    packer = Packer(cfg)
    packed = _concat_packed([packer._push(flat, lengths), packer._flush()], cfg.seq_len)
    if stats is not None:
        stats.merge(packer.stats)
    n = len(packed.tokens)
    tok_offsets = pa.array(np.arange(n + 1, dtype=np.int32) * cfg.seq_len, type=pa.int32())
    tokens = pa.ListArray.from_arrays(tok_offsets, pa.array(packed.tokens.reshape(-1), type=pa.int32()))
    cu = pa.ListArray.from_arrays(
        pa.array(packed.cu_offsets.astype(np.int32), type=pa.int32()),
        pa.array(packed.cu_values, type=pa.int32()),
    )
    out = {"tokens": tokens, "cu_seqlens": cu, "num_segments": pa.array(packed.num_segments, type=pa.int32())}
    if doc_ids:
        seg_offsets = np.concatenate(([0], np.cumsum(packed.num_segments))).astype(np.int32)
        out["doc_ids"] = pa.ListArray.from_arrays(pa.array(seg_offsets), pa.array(packed.seg_docs, pa.int64()))
    return pa.table(out)


def document_mask(cu_seqlens: np.ndarray, seq_len: int) -> np.ndarray:
    """Boolean ``(seq_len, seq_len)`` attention mask, True where query ``i`` may attend to key
    ``j``: causal and block-diagonal over the segments of ``cu_seqlens`` (the mask flash-attn's
    varlen kernels apply implicitly), for checking other attention backends against."""
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    if cu.ndim != 1 or len(cu) < 2 or cu[0] != 0 or cu[-1] != seq_len or np.any(np.diff(cu) < 0):
        raise ValueError(f"cu_seqlens must rise from 0 to seq_len={seq_len}, got {cu.tolist()}")
    seg = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
    return (seg[:, None] == seg[None, :]) & np.tri(seq_len, dtype=bool)
