"""Training straight from a source: the streamed reader and the plan of which source rows go where.

A streamed run has no store to read from. ``StreamPlan`` fixes, once, which rows of the source
are which: a leading slice of ``heldout_rows`` is never trained on (it is written to a small
store in the run folder, ``run.HELDOUT_STORE``, whose rows are the run's eval rows and whose
statistics are its normalisation), and the rows after it are dealt to data shards. ``StreamedReader``
reads one shard's training rows into a bounded shuffle buffer and yields batches with the
interface of the store's ``ShuffledReader`` (iteration over an epoch, exact ``state_dict``).

The buffer is a sequence of windows of ``buffer_rows`` consecutive shard rows, each permuted by a
generator seeded from (seed, shard, epoch, window); a batch is the next ``batch_size`` rows of
that permuted stream (it may span two windows). So the cursor is just the rows yielded: resuming
restarts the source at the start of the window holding the cursor (``skip_rows`` of
``ActivationSource.stream``, or ``rows(start, stop)``), refills that window and skips the rows
already yielded, which reproduces every later batch bit for bit.

At most two windows are held: the one batches are taken from and the next, which a producer
thread fills from the source meanwhile (so the model's forward passes overlap the updates).
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import BadInputError, FeatureforgeError, OptionError
from ..roles import ActivationSource
from ..store._reader import _as_tensor
from ..store._writer import as_numpy

__all__ = ["BLOCK_ROWS", "DEFAULT_STREAM_BUFFER_BYTES", "DEFAULT_STREAM_HOLDOUT_ROWS", "HeldOutSlice", "StreamPlan", "StreamedReader",
           "check_stream_resume", "default_stream_buffer_rows", "plan_stream"]

#: Rows of a random-access source dealt to one shard at a time (rows H + (b*S + s)*BLOCK ... go to shard s).
BLOCK_ROWS = 4096
#: Default bytes of one shuffle window (two are held): see docs/benchmarks.md "Streamed training".
DEFAULT_STREAM_BUFFER_BYTES = 1 << 30
_MIN_WINDOW_ROWS = 65536


#: Held-out rows of a streamed run when -t holdout_rows is not given (its eval rows and normalisation sample).
DEFAULT_STREAM_HOLDOUT_ROWS = 16384


def plan_stream(src: ActivationSource, cfg: Any, shards: int) -> "StreamPlan":
    """The plan of a streamed run from the loop's settings (``TrainConfig``): held-out rows, and
    the default window, never more rows than a shard trains on (a short run fills one window)."""
    local = cfg.batch_size // shards
    held = cfg.holdout_rows if cfg.holdout_rows is not None else DEFAULT_STREAM_HOLDOUT_ROWS
    buffer_rows = cfg.buffer_rows
    if not buffer_rows:
        buffer_rows = default_stream_buffer_rows(int(src.d_in), local)
        bounded = cfg.rows if cfg.rows is not None else (None if src.n_rows is None else cfg.epochs * (src.n_rows - held))
        if bounded is not None:
            buffer_rows = min(buffer_rows, max(local, -(-int(bounded) // shards)))
    return StreamPlan.make(src, shards, held, buffer_rows)


def check_stream_resume(plan: "StreamPlan", out: Any) -> None:
    """Refuse in one line to --resume a run that was streamed from another source or layout (its
    config.json is in ``out``, or in its members' folders for a sweep or ``--sites``)."""
    from ..run import CONFIG_FILE, RunConfig

    found = [out] if (out / CONFIG_FILE).exists() else sorted(p for p in out.iterdir() if (p / CONFIG_FILE).exists()) if out.is_dir() else []
    if not found:
        return
    old = {k: v for k, v in (RunConfig.read(found[0]).stream or {}).items() if k != "heldout_store"}
    new = plan.record()
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        raise FeatureforgeError(f"cannot --resume {out}: it was streamed with other settings ({', '.join(diffs)} differ); "
                                "resume with the original ones or pass --overwrite")


def default_stream_buffer_rows(d_in: int, batch_size: int) -> int:
    """Rows of one shuffle window: the largest power of two whose fp32 rows fit in
    ``DEFAULT_STREAM_BUFFER_BYTES`` (d=384: 524,288 rows), at least 65,536 rows and 4 batches.

    Measured (docs/benchmarks.md, "Streamed training: batch mixing"): with 128-row sequences and
    batches of 4,096, a window of 524,288 rows gives 0.80 of the distinct sequences per batch of
    uniform sampling over a 1M-row run; the store's two-stage shuffle gives 0.93 at a fraction of
    the memory, so a run that needs better mixing caches first (or raises buffer_rows).
    """
    rows = 1 << max(0, int(DEFAULT_STREAM_BUFFER_BYTES // (4 * max(1, d_in))).bit_length() - 1)
    return int(max(_MIN_WINDOW_ROWS, 4 * batch_size, rows))


@dataclasses.dataclass
class StreamPlan:
    """Which source rows are held out and which each data shard trains on (recorded in config.json)."""

    source: str
    options: dict[str, Any]
    shards: int
    heldout_rows: int
    random_access: bool
    seekable: bool
    buffer_rows: int
    n_rows: int | None = None

    @classmethod
    def make(cls, src: ActivationSource, shards: int, heldout_rows: int, buffer_rows: int) -> "StreamPlan":
        if heldout_rows <= 0:
            raise OptionError("a streamed run needs held-out rows (its eval rows and its normalisation sample); "
                              "pass -t holdout_rows=N with N >= 1 or leave it out")
        if buffer_rows <= 0:
            raise OptionError(f"buffer_rows must be positive, got {buffer_rows}")
        held = heldout_rows if src.random_access else shards * math.ceil(heldout_rows / shards)
        n = src.n_rows
        if n is not None and n <= held:
            raise BadInputError(f"source {src.name!r} has {n} rows, all needed for {held} held-out rows; lower -t holdout_rows")
        return cls(src.name, src.options_dict(), shards, held, bool(src.random_access), bool(src.seekable), int(buffer_rows),
                   None if n is None else int(n))

    def record(self) -> dict[str, Any]:
        """``config.json``'s ``stream``: enough to rebuild the source and find any row again."""
        return dataclasses.asdict(self)

    @property
    def train_rows(self) -> int | None:
        """Training rows the source holds in all (None: unbounded)."""
        return None if self.n_rows is None else self.n_rows - self.heldout_rows

    def shard_train_rows(self, shard: int) -> int | None:
        total = self.train_rows
        if total is None:
            return None
        if not self.random_access:
            return None  # a streaming source's share per shard is its own business
        blocks, tail = divmod(total, BLOCK_ROWS)
        rows = (blocks // self.shards + (1 if shard < blocks % self.shards else 0)) * BLOCK_ROWS
        return rows + (tail if shard == blocks % self.shards else 0)

    # -- rows ---------------------------------------------------------------------------------
    def heldout(self, src: ActivationSource) -> Iterator[dict[str, Any]]:
        """The held-out rows in order: source rows [0, H) of a random-access source, else each
        shard's first H/S rows of its ``stream``, shard after shard."""
        if self.random_access:
            for lo in range(0, self.heldout_rows, BLOCK_ROWS):
                yield src.rows(lo, min(self.heldout_rows, lo + BLOCK_ROWS))
            return
        per = self.heldout_rows // self.shards
        for shard in range(self.shards):
            yield from _limited(src.stream(shard, self.shards, 0, per), per, f"source {self.source!r} shard {shard}")

    def training(self, src: ActivationSource, shard: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        """Shard ``shard``'s training rows from its row ``skip`` on, as batches of columns."""
        if self.random_access:
            yield from self._blocks(src, shard, skip)
            return
        per = self.heldout_rows // self.shards
        yield from src.stream(shard, self.shards, per + skip, None)

    def _blocks(self, src: ActivationSource, shard: int, skip: int) -> Iterator[dict[str, Any]]:
        block, offset = divmod(skip, BLOCK_ROWS)
        while True:
            lo = self.heldout_rows + (block * self.shards + shard) * BLOCK_ROWS + offset
            hi = lo - offset + BLOCK_ROWS
            if self.n_rows is not None:
                hi = min(hi, self.n_rows)
            if lo >= hi:
                return
            yield src.rows(lo, hi)
            block, offset = block + 1, 0


def _limited(batches: Iterator[dict[str, Any]], rows: int, what: str) -> Iterator[dict[str, Any]]:
    """Exactly ``rows`` rows of ``batches`` (a source may yield more than max_rows asked)."""
    left = rows
    for batch in batches:
        n = len(batch["acts"])
        if n >= left:
            yield {k: v[:left] for k, v in batch.items()}
            return
        left -= n
        yield batch
    if left:
        raise BadInputError(f"{what} ended {left} rows short of the held-out rows; lower -t holdout_rows")


class StreamedReader:
    """One data shard's training rows through a bounded shuffle buffer; see the module doc.

    Iterating gives one epoch (until the source ends; forever for an unbounded source) of batches,
    dicts of CPU torch tensors holding ``columns``.
    """

    def __init__(self, plan: StreamPlan, source: ActivationSource, batch_size: int, *, columns: Sequence[str] = ("acts",),
                 seed: int = 0, rank: int = 0, world_size: int = 1, buffer_rows: int | None = None,
                 keys: "dict[str, str] | None" = None):
        if batch_size <= 0:
            raise BadInputError(f"batch_size must be positive, got {batch_size}")
        if world_size != plan.shards or not 0 <= rank < world_size:
            raise BadInputError(f"shard {rank} of {world_size} does not fit the plan's {plan.shards} shards")
        self.plan = plan
        self.source = source
        self.batch_size = int(batch_size)
        self.columns = tuple(columns)
        #: Each column's key in the source's batches (a store's ``acts_<i>`` is site i's name there).
        self.keys = dict(keys or {})
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.window_rows = int(buffer_rows or plan.buffer_rows)
        self.epoch = 0
        self.row = 0
        self.label = f"source {plan.source!r} (shard {rank} of {world_size})"
        #: ``--tee``: gets every source batch this reader pulls (featureforge.training._tee.TeeSource).
        self.tee: Any = None
        # What the progress bar shows: rows the source produced, rows held in windows.
        self.source_rows = 0
        self.resident_rows = 0
        #: The largest ``doc_ids`` the source has produced for this reader (-1: none seen, or no such column):
        #: a streamed run records it so held-out text for a live model starts after every document it trained on.
        self.last_doc_id = -1
        self._started = time.perf_counter()

    # -- cursor (as ShuffledReader's) ---------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "row": self.row, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "buffer_rows": self.window_rows, "heldout_rows": self.plan.heldout_rows, "last_doc_id": self.last_doc_id}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, mine in (("seed", self.seed), ("world_size", self.world_size), ("buffer_rows", self.window_rows)):
            if int(state.get(key, mine)) != mine:
                raise BadInputError(f"streamed cursor was saved with {key}={state[key]}, not {mine}; resume with the same settings")
        self.epoch, self.row = int(state["epoch"]), int(state["row"])
        self.last_doc_id = max(self.last_doc_id, int(state.get("last_doc_id", -1)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.row = int(epoch), 0

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the two windows, once the row size is known (0 before the first window)."""
        return getattr(self, "_row_bytes", 0) * 2 * self.window_rows

    def progress(self) -> dict[str, float]:
        """Source rows per second since this reader started, and the buffer's fill (0..1)."""
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        return {"source_rows_per_s": self.source_rows / elapsed, "buffer_fill": self.resident_rows / (2 * self.window_rows)}

    # -- windows ------------------------------------------------------------------------------
    def _permutation(self, epoch: int, window: int, rows: int) -> np.ndarray:
        seq = np.random.SeedSequence([self.seed, self.rank, epoch, window, 0x57EA])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
        return torch.randperm(rows, generator=gen).numpy()

    def _fill(self, epoch: int, first: int, out: queue.Queue, slots: threading.Semaphore, stop: threading.Event) -> None:
        """Producer: windows ``first, first + 1, ...`` of the epoch, each permuted, into ``out``; None at the end."""
        try:
            batches = self.plan.training(self.source, self.rank, first * self.window_rows)
            pending: list[dict[str, np.ndarray]] = []
            have = 0
            index = first
            ended = False
            while not ended:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                while have < self.window_rows:
                    if stop.is_set():
                        return
                    batch = next(batches, None)
                    if self.tee is not None:
                        self.tee.offer(batch, epoch) if batch is not None else self.tee.offer_end(epoch)
                    if batch is None:
                        ended = True
                        break
                    if batch.get("doc_ids") is not None and len(batch["doc_ids"]):
                        self.last_doc_id = max(self.last_doc_id, int(as_numpy(batch["doc_ids"]).max()))
                    part = {c: as_numpy(batch[self.keys.get(c, c)]) for c in self.columns}
                    n = len(batch["acts"])
                    self.source_rows += n
                    pending.append(part)
                    have += n
                    self.resident_rows += n
                if not have:
                    break
                take = min(have, self.window_rows)
                window = {c: np.concatenate([p[c] for p in pending]) for c in self.columns}
                rest = {c: a[take:] for c, a in window.items()}
                window = {c: a[:take] for c, a in window.items()}
                self._row_bytes = sum(a.itemsize * (a.shape[1] if a.ndim > 1 else 1) for a in window.values())
                pending = [rest] if have > take else []
                have -= take
                self.resident_rows -= have  # rows beyond this window count towards the next
                perm = self._permutation(epoch, index, take)
                if not _put(out, (window, perm), stop):
                    return
                self.resident_rows += have
                index += 1
            _put(out, None, stop)
        except BaseException as exc:  # surfaced in the consumer
            _put(out, exc, stop)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        first, skip = divmod(self.row, self.window_rows)
        out: queue.Queue = queue.Queue()
        slots = threading.Semaphore(2)  # windows held at once: one read from, one filling
        stop = threading.Event()
        thread = threading.Thread(target=self._fill, args=(epoch, first, out, slots, stop), daemon=True, name="featureforge-stream")
        thread.start()
        batch: dict[str, np.ndarray] | None = None
        have = 0
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                window, perm = item
                pos, skip = skip, 0
                while pos < len(perm):
                    if batch is None:
                        batch = {c: np.empty((self.batch_size, *a.shape[1:]), dtype=a.dtype) for c, a in window.items()}
                        have = 0
                    take = min(self.batch_size - have, len(perm) - pos)
                    idx = perm[pos : pos + take]
                    for c, a in window.items():
                        np.take(a, idx, axis=0, out=batch[c][have : have + take])
                    have += take
                    pos += take
                    if have == self.batch_size:
                        self.row += self.batch_size
                        ready, batch = batch, None
                        yield {c: _tensor(a) for c, a in ready.items()}
                self.resident_rows -= len(perm)
                del window
                slots.release()
            # a last partial batch is dropped, as the store reader does with drop_last
            self.epoch, self.row = epoch + 1, 0
        finally:
            stop.set()
            thread.join(timeout=5)
            self.resident_rows = 0


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> bool:
    if stop.is_set():
        return False
    out.put(item)
    return True


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return _as_tensor(arr, str(arr.dtype))  # the store reader's rule for unsigned columns


class WrappedSource(ActivationSource):
    """Some rows of another source, given to the store writer: it reports the wrapped source's
    name, options, columns and provenance, so a store written from it records the real source
    (and rebuilds it, e.g. for a live model)."""

    def __init__(self, inner: ActivationSource, plan: StreamPlan):  # no Plugin.__init__: the options are inner's
        self.inner = inner
        self.plan = plan
        self.name = inner.name  # type: ignore[misc]
        self.options = inner.options

    def options_dict(self) -> dict[str, Any]:
        return self.inner.options_dict()

    @property
    def columns(self) -> dict[str, str]:
        return self.inner.columns

    @property
    def d_in(self) -> int:
        return self.inner.d_in

    @property
    def sites(self) -> Any:
        return self.inner.sites

    def provenance(self) -> dict[str, Any]:
        return self.inner.provenance()


class HeldOutSlice(WrappedSource):
    """The plan's held-out rows as a source of their own, so the store writer caches them
    (crash-safe, resumable) into the run's held-out store."""

    @property
    def n_rows(self) -> int:
        return self.plan.heldout_rows

    def ground_truth(self) -> Any:
        return self.inner.ground_truth()

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        if world_size != 1:
            raise BadInputError("the held-out slice of a streamed run is written by one writer")
        yield from skip_rows_of(self.plan.heldout(self.inner), int(skip_rows))


def skip_rows_of(batches: Iterator[dict[str, Any]], drop: int) -> Iterator[dict[str, Any]]:
    """``batches`` without their first ``drop`` rows."""
    for batch in batches:
        n = len(batch["acts"])
        if drop >= n:
            drop -= n
            continue
        yield {k: v[drop:] for k, v in batch.items()} if drop else batch
        drop = 0
