"""``--tee STORE``: a streamed run also writes the rows it streams into a store, for later runs.

The store is written by the ordinary store writer (``api.cache``), so it is crash-safe and a
killed run's ``--resume`` continues it exactly as a rerun of ``featureforge cache`` would: its
bytes equal those of ``featureforge cache`` of the training rows (the source's rows after the
held-out slice, in the source's order, through the default write-side shuffle). The writer runs on
its own thread and reads from ``TeeSource``, which the streamed reader feeds with every source
batch it pulls (each row is computed once). When the writer asks for rows the reader will not
pass it (resuming from a commit marker behind the reader's restart row), ``TeeSource`` computes
just that gap from the source.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

from ..errors import BadInputError
from ..roles import ActivationSource
from ..store._writer import as_numpy
from ._stream import StreamPlan, WrappedSource, skip_rows_of

__all__ = ["Tee", "TeeSource"]

_ABORT = object()  # the run stopped: end the writer without committing a short last chunk
_QUEUE_BATCHES = 8  # source batches waiting for the writer (the reader waits when it is this far ahead)


class TeeSource(WrappedSource):
    """The training rows of shard 0 as a source: handed over by the reader, the gap recomputed."""

    def __init__(self, inner: ActivationSource, plan: StreamPlan, rows: int):
        super().__init__(inner, plan)
        self.total = rows
        self.queue: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
        self.reader_start = 0  # shard row of the first batch the reader hands over
        self.closed = threading.Event()

    @property
    def n_rows(self) -> int:
        return self.total

    def provenance(self) -> dict[str, Any]:
        return {**self.inner.provenance(), "streamed_training_rows_after": self.plan.heldout_rows}

    def offer(self, batch: dict[str, Any], epoch: int) -> None:
        """Called by the reader's producer with each batch it pulled (first epoch only)."""
        if epoch != 0:
            return
        if batch is not None and batch is not _ABORT:
            batch = {k: as_numpy(v) for k, v in batch.items() if v is not None}
        while not self.closed.is_set():
            try:
                self.queue.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def offer_end(self, epoch: int) -> None:
        """The source ended in the first epoch: the writer has had every row it will get."""
        if epoch == 0:
            self.offer(None, epoch)

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        if world_size != 1:
            raise BadInputError("--tee writes one writer's store; train with one data shard")
        pos = int(skip_rows)
        if pos < self.reader_start:  # rows before the reader's restart: compute them
            left = self.reader_start - pos
            for batch in self.plan.training(self.inner, 0, pos):
                n = len(batch["acts"])
                yield {k: v[:left] for k, v in batch.items()} if n > left else batch
                left -= min(n, left)
                if not left:
                    break
            pos = self.reader_start
        yield from skip_rows_of(self._handed_over(), pos - self.reader_start)

    def _handed_over(self) -> Iterator[dict[str, Any]]:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            if batch is _ABORT:
                raise _Aborted()
            yield batch


class _Aborted(Exception):
    pass


class Tee:
    """The writer thread of one ``--tee`` store."""

    def __init__(self, inner: ActivationSource, plan: StreamPlan, path: str, rows: int):
        if plan.random_access:
            raise BadInputError(f"--tee: source {inner.name!r} produces rows by index, so a store of it is `featureforge cache` "
                                "(the rows come out the same); leave out --tee")
        if plan.shards != 1:
            raise BadInputError(f"--tee writes the rows of one data shard; this run has {plan.shards}: train with one process, or leave out --tee")
        self.source = TeeSource(inner, plan, rows)
        self.path = path
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self, reader_row: int, window_rows: int, epoch: int) -> None:
        """Start writing; the reader restarts at ``reader_row`` of ``epoch`` (its window's first row)."""
        self.source.reader_start = (reader_row // window_rows) * window_rows if epoch == 0 else self.source.total
        self.thread = threading.Thread(target=self._write, daemon=True, name="featureforge-tee")
        self.thread.start()

    def _write(self) -> None:
        from ..api import cache

        try:
            cache(self.source, store=self.path, rows=self.source.total, rank=0, world_size=1, progress=False)
        except _Aborted:
            pass
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.source.closed.set()

    def abort(self) -> None:
        """The run failed: stop the writer where it is (its committed chunks stay; --resume continues)."""
        if self.thread is not None and self.thread.is_alive():
            self.source.offer(_ABORT, 0)
            self.thread.join(timeout=60)

    def finish(self) -> None:
        """Wait for the store to be complete (the reader has handed over every training row)."""
        if self.thread is not None:
            if self.source.reader_start >= self.source.total:
                self.source.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error
