"""Feeding Ray Train: packed sequences -> per-worker torch batches in a deterministic, resumable order.

Input: a packed dataset, i.e. a ``ray.data.Dataset`` or a Parquet folder with ``seq_id``
(int64), ``tokens`` (list<int32>, all ``seq_len`` long) and ``cu_seqlens`` (list<int32>, from
0 to ``seq_len``). The order (``raylm.data.position``) works on *indices* ``0..N-1``: for a
Dataset or a plain folder the index is the seq_id (which must then be dense); for a token-shard
folder written by ``raylm prepare`` (seq_id ``unit << 32 | position``, see ``shards``) the
manifest's per-unit counts map index ``i`` to the ``i``-th smallest seq_id
(``raylm.data.reader.IdMap``), so a window of consecutive indices is one seq_id range. Batches
carry the stored seq_ids.

``TrainBatches`` reads, window after window in the epoch's order, just that window's seq_id
range (``raylm.data.reader``), keeps only the rows of its own blocks and reorders them in
memory. A background thread reads ``prefetch`` windows ahead, so memory is bounded by
``(prefetch + 1) * window / W`` sequences per worker (plus one batch), never the whole dataset;
with ``timeout_s`` a read that gives nothing for that long raises ``TimeoutError``.
Its ``position`` (``DataPosition``) after each batch is what a checkpoint saves; with
``grad_accum`` micro-batches per optimizer step an epoch ends on a whole step, and a position
saved at another split of the same step size (other workers, micro-batch, accumulation) goes on
in the same order.

``TrainBatches.data_wait_s`` is the total time the training loop spent blocked in ``next()``
(``last_wait_s`` the latest one): near zero when the prefetching keeps up.

Batches are dicts of tensors: ``seq_id`` (int64 ``(B,)``), ``input_ids`` (int64 ``(B, L)``),
``labels`` (int64 ``(B, L)``, already shifted: ``labels[:, t]`` is the token after ``t`` in the
same document segment, -100 at the last token of every segment, so no loss crosses a document
boundary), ``position_ids`` (int64 ``(B, L)``, restarting at every segment), ``cu_seqlens``
(int32, the segment boundaries of the flattened ``B*L`` tokens, as ``flash_attn_varlen_func``
takes them) and ``max_seqlen`` (int).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from raylm.data.position import DataPosition, window_ids, window_order
from raylm.data.reader import SeqSource, Stopped, read_rows, take

IGNORE_INDEX = -100


class TrainBatches:
    """This worker's batches of the global order, from ``position`` on (see the module docstring).

    Iterate it (it ends after ``num_epochs`` epochs counted from 0, or never when None);
    ``position`` is the position after the last batch it yielded, to checkpoint after the
    optimiser step on that batch. Close it (or use it as a context manager) when breaking off
    early, to stop the read-ahead thread.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        world_rank: int,
        world_size: int,
        position: DataPosition | None = None,
        seed: int | None = None,
        prefetch: int = 1,
        *,
        window: int = 4096,
        num_sequences: int | None = None,
        num_epochs: int | None = None,
        read_batch_size: int = 256,
        grad_accum: int = 1,
        timeout_s: float | None = None,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= world_rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, world_rank={world_rank}, world_size={world_size}")
        if window < 1 or prefetch < 0 or grad_accum < 1:
            raise ValueError(f"bad window={window}, prefetch={prefetch} or grad_accum={grad_accum}")
        if position is not None and num_sequences is None:
            num_sequences = position.num_sequences
        if seed is None:  # the saved seed, or 0
            seed = position.seed if position is not None else 0
        self._source = SeqSource(data)
        if num_sequences is None:
            num_sequences = self._source.count()
        now = DataPosition(seed=seed, world_size=world_size, batch_size=batch_size, window=window,
                           num_sequences=num_sequences, grad_accum=grad_accum)
        if now.epoch_size < 1:
            raise ValueError(f"{num_sequences} sequences make no global batch of {now.step_size}")
        self.position = position.resume_as(now) if position is not None else now
        self.ids = self._source.id_map(num_sequences)
        if self.ids.size != num_sequences:
            raise ValueError(f"num_sequences={num_sequences} but the data holds {self.ids.size}")
        self.rank = world_rank
        self.prefetch = prefetch
        self.num_epochs = num_epochs
        self.read_batch_size = read_batch_size
        self.timeout_s = timeout_s
        self.data_wait_s = 0.0
        self.last_wait_s = 0.0
        self.batches = 0
        self._gen: Iterator[dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._gen is None:
            self._gen = self._batches()
        t0 = time.perf_counter()
        batch = next(self._gen)
        self.last_wait_s = time.perf_counter() - t0
        self.data_wait_s += self.last_wait_s
        self.batches += 1
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._gen is not None:
            self._gen.close()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, float]:
        return {"data_wait_s": self.data_wait_s, "last_data_wait_s": self.last_wait_s,
                "data_batches": float(self.batches)}

    # -- planning ----------------------------------------------------------------------------

    def _plan(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """``(epoch, lo, hi, ids)`` per window to read: ``ids`` are this rank's seq_ids of the
        window in order, from the start position on (windows without any are left out)."""
        p = self.position
        B, BW, N, S = p.batch_size, p.global_batch_size, p.num_sequences, p.window
        end = p.epoch_size  # positions past it are the skipped tail
        epoch, start = p.epoch, p.consumed
        while self.num_epochs is None or epoch < self.num_epochs:
            pos = 0
            for w in window_order(N, S, p.seed, epoch):
                lo, hi = int(w) * S, min((int(w) + 1) * S, N)
                n = hi - lo
                a, b = max(pos, start), min(pos + n, end)
                if a < b:
                    offs = np.arange(a, b)
                    mine = offs[(offs % BW) // B == self.rank]
                    if len(mine):
                        ids = window_ids(N, S, p.seed, epoch, int(w))[mine - pos]
                        yield epoch, lo, hi, ids
                pos += n
                if pos >= end:
                    break
            epoch, start = epoch + 1, 0

    def _read(self, lo: int, hi: int, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        return read_rows(self._source, self.ids, lo, hi, ids, self.read_batch_size, self._stop)

    def _put(self, out: queue.Queue, item: Any) -> bool:
        """Queue ``item`` unless stopped first; False when stopped."""
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _reader(self, out: queue.Queue) -> None:
        try:
            for epoch, lo, hi, ids in self._plan():
                if not self._put(out, (epoch, self.ids.to_seq_id(ids), *self._read(lo, hi, ids))):
                    return
            self._put(out, None)
        except Stopped:
            return
        except BaseException as e:  # handed to the consuming thread
            self._put(out, e)

    def _windows(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[np.ndarray]]]:
        if self.prefetch == 0:
            for epoch, lo, hi, ids in self._plan():
                yield (epoch, self.ids.to_seq_id(ids), *self._read(lo, hi, ids))
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._reader, args=(q,), daemon=True, name="TrainBatches")
        self._thread.start()
        while True:
            item = take(q, self.timeout_s, f"{self._source.name}, rank {self.rank}")
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _batches(self) -> Iterator[dict[str, Any]]:
        B = self.position.batch_size
        pend_ids: list[np.ndarray] = []
        pend_tok: list[np.ndarray] = []
        pend_cu: list[np.ndarray] = []
        n_pend = 0
        epoch_of_pending = self.position.epoch
        try:
            for epoch, ids, tokens, cu in self._windows():
                if epoch != epoch_of_pending:
                    assert n_pend == 0, "a batch cannot span two epochs"
                    epoch_of_pending = epoch
                pend_ids.append(ids)
                pend_tok.append(tokens)
                pend_cu.extend(cu)
                n_pend += len(ids)
                while n_pend >= B:
                    all_ids = np.concatenate(pend_ids)
                    all_tok = np.concatenate(pend_tok)
                    batch = make_batch(all_ids[:B], all_tok[:B], pend_cu[:B])
                    pend_ids, pend_tok, pend_cu = [all_ids[B:]], [all_tok[B:]], pend_cu[B:]
                    n_pend -= B
                    self.position = self.position.advance()
                    yield batch
        finally:
            self._stop.set()


def make_batch(seq_ids: np.ndarray, tokens: np.ndarray, cu_seqlens: list[np.ndarray]) -> dict[str, Any]:
    """The torch batch of ``B`` packed sequences (see the module docstring)."""
    import torch

    B, L = tokens.shape
    flat_cu = np.unique(np.concatenate([np.asarray(c, np.int64) + i * L for i, c in enumerate(cu_seqlens)]))
    if flat_cu[0] != 0 or flat_cu[-1] != B * L or any(c[-1] != L or c[0] != 0 for c in cu_seqlens):
        raise ValueError(f"cu_seqlens must run from 0 to seq_len={L}")
    t = np.arange(B * L)
    seg = np.searchsorted(flat_cu, t, side="right") - 1
    position_ids = (t - flat_cu[seg]).reshape(B, L)
    labels = np.full(B * L, IGNORE_INDEX, np.int64)
    flat_tok = tokens.reshape(-1).astype(np.int64)
    labels[:-1] = flat_tok[1:]
    labels[flat_cu[1:] - 1] = IGNORE_INDEX
    return {
        "seq_id": torch.from_numpy(np.ascontiguousarray(seq_ids, dtype=np.int64)),
        "input_ids": torch.from_numpy(flat_tok.reshape(B, L)),
        "labels": torch.from_numpy(labels.reshape(B, L)),
        "position_ids": torch.from_numpy(position_ids),
        "cu_seqlens": torch.from_numpy(flat_cu.astype(np.int32)),
        "max_seqlen": int(np.diff(flat_cu).max()),
    }


def split_rows(batch: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """``batch`` with every row of ``L`` tokens cut into ``L // seq_len`` rows of ``seq_len``
    (a length curriculum at a constant number of tokens per step). Each cut is a new segment
    boundary: its position ids restart and the token before it gets no label, as at a document
    boundary, so attention and loss never reach across it."""
    import torch

    B, L = batch["input_ids"].shape
    if seq_len == L:
        return batch
    if seq_len > L or L % seq_len:
        raise ValueError(f"seq_len {seq_len} of the length schedule must divide the stored seq_len {L}")
    cu = batch["cu_seqlens"].long()
    cuts = torch.arange(0, B * L + 1, seq_len, dtype=torch.long)
    flat_cu = torch.unique(torch.cat([cu, cuts]))
    t = torch.arange(B * L)
    seg = torch.searchsorted(flat_cu, t, right=True) - 1
    labels = batch["labels"].reshape(-1).clone()
    labels[flat_cu[1:] - 1] = IGNORE_INDEX
    n = B * L // seq_len
    return {
        **batch,
        "input_ids": batch["input_ids"].reshape(n, seq_len),
        "labels": labels.reshape(n, seq_len),
        "position_ids": (t - flat_cu[seg]).reshape(n, seq_len),
        "cu_seqlens": flat_cu.to(torch.int32),
        "max_seqlen": int(torch.diff(flat_cu).max()),
    }
