"""Feeding Ray Train from several sources at target weights: ``MixedBatches``.

Each source is a packed dataset as ``raylm.data.loader`` reads it (a token-shard folder, a
Parquet folder or a ``ray.data.Dataset``) with its own deterministic order: the windowed
shuffle of the loader (``window_order`` / ``window_ids``), seeded by the data seed and the
source's name, epoch after epoch. A ``Mixer`` (smooth weighted round-robin,
``raylm.data.mixing``) picks the source of every slot of every global batch: slot ``j`` of a
global batch of ``B * W`` sequences goes to worker ``j // B``, and the ``k``-th time a source is
picked it gives the ``k``-th sequence of its order. Every worker runs the same Mixer, so all
ranks agree on the whole global batch without talking to each other, and each one reads only
the sources' windows (one background thread per source reads ``prefetch`` windows ahead) and
keeps its own slots.

The realised mix is the Mixer's: within a few sequences of the target over any window, so
well inside 1% of a 1,000-sequence window; weights can follow a schedule (in sequences; the
training config gives it in optimizer steps and converts). A source is up-sampled (repeated,
with a warning) when the mix needs more of it than it holds, up to ``max_epochs``.

Resume: ``MixPosition`` holds the Mixer's state (its step, credits, and the epoch and position
reached in every source) with the seed, world size, batch size, accumulation, window and source
sizes it was made with. It is global (rank 0 saves it); restoring it on every rank continues
with exactly the sequences an uninterrupted run would have seen next, also at another number
of workers with the same sequences per optimizer step (``MixPosition.resume_as``).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from raylm.data.loader import make_batch
from raylm.data.mixing import MixConfig, Mixer
from raylm.data.position import MixPosition, window_ids, window_order
from raylm.data.reader import SeqSource, Stopped, read_rows, take


def source_seed(seed: int, name: str) -> int:
    """The order seed of source ``name``: independent orders per source, stable across runs."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFFFFFF


class _SourceStream:
    """One source's rows in its order, ``get(epoch, index)`` for increasing positions; a
    background thread reads whole windows ahead (bounded by ``prefetch``)."""

    def __init__(self, name: str, data: Any, seed: int, window: int, prefetch: int, read_batch_size: int,
                 timeout_s: float | None = None) -> None:
        self.name, self.timeout_s = name, timeout_s
        self.source = SeqSource(data)
        self.size = self.source.count()
        self.ids = self.source.id_map(self.size)
        self.seed, self.window, self.read_batch_size = seed, window, read_batch_size
        self.prefetch = max(1, prefetch)
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._current: tuple[int, int, int, np.ndarray, np.ndarray, list[np.ndarray]] | None = None

    def _windows(self, epoch: int, index: int) -> Iterator[tuple[int, int, int, np.ndarray, np.ndarray, list]]:
        """``(epoch, first index, end index, seq_ids, tokens, cu)`` per window, from the one
        holding ``(epoch, index)`` on."""
        N, S = self.size, self.window
        while True:
            pos = 0
            for w in window_order(N, S, self.seed, epoch):
                lo, hi = int(w) * S, min((int(w) + 1) * S, N)
                if pos + hi - lo > index:
                    ids = window_ids(N, S, self.seed, epoch, int(w))
                    tokens, cu = read_rows(self.source, self.ids, lo, hi, ids, self.read_batch_size, self._stop)
                    yield epoch, pos, pos + hi - lo, self.ids.to_seq_id(ids), tokens, cu
                pos += hi - lo
            epoch, index = epoch + 1, 0

    def _reader(self, epoch: int, index: int) -> None:
        try:
            for item in self._windows(epoch, index):
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except Stopped:
            return
        except BaseException as e:  # handed to the consumer
            self._queue.put(e)

    def get(self, epoch: int, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        """``(seq_id, tokens, cu_seqlens)`` of the ``index``-th sequence of ``epoch``."""
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._reader, args=(epoch, index), daemon=True,
                                            name=f"MixedBatches[{self.name}]")
            self._thread.start()
        while self._current is None or (self._current[0], self._current[2]) <= (epoch, index):
            item = take(self._queue, self.timeout_s, f"source {self.name!r}")
            if isinstance(item, BaseException):
                raise item
            self._current = item
        e, start, _, seq_ids, tokens, cu = self._current
        if (e, start) > (epoch, index):
            raise RuntimeError(f"source {self.name!r}: position ({epoch}, {index}) was asked for after ({e}, {start})")
        k = index - start
        return int(seq_ids[k]), tokens[k], cu[k]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


class MixedBatches:
    """This worker's batches of a mix of ``sources`` (name -> packed data), see the module
    docstring. Same interface as ``TrainBatches``: iterate it, checkpoint ``position``, close it.
    ``counts`` holds the sequences taken from each source by all workers together."""

    def __init__(
        self,
        sources: Mapping[str, Any],
        mix: MixConfig,
        batch_size: int,
        world_rank: int,
        world_size: int,
        position: MixPosition | None = None,
        seed: int = 0,
        prefetch: int = 1,
        *,
        window: int = 4096,
        read_batch_size: int = 256,
        grad_accum: int = 1,
        timeout_s: float | None = None,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= world_rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, world_rank={world_rank}, world_size={world_size}")
        unknown = sorted(set(mix.sources) - set(sources))
        if unknown:
            raise ValueError(f"the mix names sources {unknown} that have no data (sources: {sorted(sources)})")
        self._streams = {name: _SourceStream(name, data, source_seed(seed, name), window, prefetch, read_batch_size,
                                             timeout_s) for name, data in sources.items() if name in mix.sources}
        sizes = {name: s.size for name, s in self._streams.items()}
        self.mixer = Mixer(mix, sizes)
        now = MixPosition(mixer=self.mixer.state_dict(), sizes=sizes, seed=seed, world_size=world_size,
                          batch_size=batch_size, window=window, grad_accum=grad_accum)
        if position is not None:
            self.mixer.load_state_dict(position.resume_as(now).mixer)
            now = dataclasses.replace(now, mixer=self.mixer.state_dict())
        self.position = now
        self.rank = world_rank
        self.counts = dict.fromkeys(self.mixer.sources, 0)
        self.data_wait_s = 0.0
        self.last_wait_s = 0.0
        self.batches = 0

    def __iter__(self) -> MixedBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        B = self.position.batch_size
        picks = [(*self.mixer.next(), self.mixer.last_epoch) for _ in range(self.position.global_batch_size)]
        for name, _, _ in picks:
            self.counts[name] += 1
        rows = [self._streams[name].get(epoch, index) for name, index, epoch in picks[self.rank * B:(self.rank + 1) * B]]
        batch = make_batch(np.array([r[0] for r in rows], np.int64), np.stack([r[1] for r in rows]), [r[2] for r in rows])
        self.position = dataclasses.replace(self.position, mixer=self.mixer.state_dict())
        self.last_wait_s = time.perf_counter() - t0
        self.data_wait_s += self.last_wait_s
        self.batches += 1
        return batch

    def close(self) -> None:
        for s in self._streams.values():
            s.close()

    def __enter__(self) -> MixedBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, float]:
        return {"data_wait_s": self.data_wait_s, "last_data_wait_s": self.last_wait_s,
                "data_batches": float(self.batches)}
