"""The crash-safe store writer: whole owned chunks, then statistics, then the commit marker.

A writer of rank ``r`` among ``W`` owns chunks ``r, r+W, r+2W, ...``. Random-access sources
produce each chunk's rows directly, so any writer count gives the same bytes; streaming sources
fill the writer's chunks in order from its own shard of the data.

Streaming sources emit the rows of one sequence one after another; a reader that mixes a window
of chunks would then draw whole runs of each sequence into one batch. So a store may have a
write-side shuffle window (``write_shuffle_rows`` W, recorded in the store): each writer cuts its
own row stream into windows of W rows, counted in rows (not chunks, so the bytes do not depend on
the chunk size), and stores each window's rows in a permutation seeded by (rank, window index).
A resumed writer asks the source again from the start of the window holding its commit marker
and recomputes that window's permutation, so the bytes are those of an uninterrupted run.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import BadInputError, StoreError
from ..roles import ActivationSource
from ._view import ActivationStore
from ._format import WRITE_CONFIG, to_float32, to_storage


def as_numpy(value: Any) -> np.ndarray:
    """Numpy view of a batch column (torch tensors are moved to CPU; bf16 widened to fp32)."""
    if isinstance(value, np.ndarray):
        return value
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


class StoreWriter:
    """Writes one writer's share of a store from a source, resuming at its commit marker."""

    def __init__(
        self,
        store: ActivationStore,
        source: ActivationSource,
        rank: int = 0,
        world_size: int = 1,
        progress: Callable[[int], None] | None = None,
    ):
        self.store = store
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.progress = progress or (lambda rows: None)
        self.arrays = {name: store.array(name).with_config(WRITE_CONFIG) for name in store.columns}
        # Each site's statistics array, by the column it describes (a one-site store: acts -> chunk_stats).
        self.stats = {site["column"]: store.array(site["stats"]).with_config(WRITE_CONFIG) for site in store.site_records}
        # A source's batch carries site 0 as ``acts`` and every further site under its name.
        self.site_keys = {site["name"]: site["column"] for site in store.site_records[1:]}
        store.marker(rank)  # a damaged marker is named (and --repair rebuilds it) before any work
        self.marker_group = store.group[f"writers/{rank}"]
        self.my_chunks = list(range(rank, store.n_chunks, world_size))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    # -- public -------------------------------------------------------------------------------
    def committed(self) -> tuple[int, int]:
        """(chunks, rows) this writer has committed so far."""
        marker = dict(self.marker_group.attrs)
        n = int(marker.get("chunks", 0))
        rows = sum(self.store.chunk_rows(c) for c in self.my_chunks[:n])
        if n and marker.get("last_chunk_rows") is not None:
            rows += int(marker["last_chunk_rows"]) - self.store.chunk_rows(self.my_chunks[n - 1])
        return n, rows

    def rows_to_write(self) -> int:
        return sum(self.store.chunk_rows(c) for c in self.my_chunks)

    def verify(self) -> int:
        """Rewind the marker to this writer's first committed chunk whose files are missing or damaged.

        Readers refuse such a chunk and tell the user to rerun ``cache``; this is what makes that
        rerun rewrite it (and every later chunk of this writer, which a stream source must redo).
        Returns the number of committed chunks that remain.
        """
        n, _ = self.committed()
        arrays = dict(self.arrays, **{name: None for name in self.store.stats_arrays})
        sizes = {name: self._chunk_sizes(name) for name in arrays} if self.store.location.remote else None
        for i, chunk in enumerate(self.my_chunks[:n]):
            for name in arrays:
                key = self.store.chunk_key(name, chunk)
                expected = self.store.chunk_file_bytes(name)
                path = self.store.location.key_path(key)
                if sizes is not None:
                    size = sizes[name].get(path.split("://", 1)[-1])
                else:
                    try:
                        size = os.stat(path).st_size
                    except FileNotFoundError:
                        size = None
                if size != expected:
                    self._commit(i, last_chunk_rows=None, done=False)
                    return i
        return n

    def _chunk_sizes(self, name: str) -> dict[str, int]:
        fs, prefix = self.store.location.fs, self.store.location.key_path(name)
        found = fs.find(prefix, detail=True) if fs.exists(prefix) else {}
        return {path.split("://", 1)[-1]: int(info.get("size") or 0) for path, info in found.items()}

    def repair(self) -> list[int]:
        """Check every committed chunk of this writer in full (size and checksum) and rewrite the damaged ones.

        Rows of a random-access source are a function of (options, row index), so a damaged chunk
        is regenerated alone, in place; a stream source cannot produce one chunk on its own, so the
        marker is rewound to its first damaged chunk and ``run`` rewrites from there. Returns the
        damaged chunk indices.
        """
        n, _ = self.committed()
        names = list(self.arrays) + self.store.stats_arrays
        damaged = []
        for chunk in self.my_chunks[:n]:
            if any(self.store.chunk_problem(name, chunk) for name in names):
                damaged.append(chunk)
            self.progress(self.store.chunk_rows(chunk))
        if not damaged:
            return []
        if not self.source.random_access:
            self._commit(self.my_chunks.index(damaged[0]), last_chunk_rows=None, done=False)
            return damaged
        for chunk in damaged:
            start = chunk * self.store.rows_per_chunk
            rows = self.store.chunk_rows(chunk)
            data = self._columns_of(self.source.rows(start, start + rows))
            self._validate(data, start, rows)
            self._store_chunk(chunk, data, rows)
        return damaged

    def run(self) -> int:
        """Write every remaining owned chunk; returns rows written by this call."""
        try:
            return self._run()
        except PermissionError as exc:
            raise StoreError(
                f"cannot write store {self.store.url}: permission denied on {exc.filename or exc}; "
                f"make the store writable (chmod -R u+w {self.store.location.root}) or cache into another --store"
            ) from None

    def _run(self) -> int:
        self.verify()
        if dict(self.marker_group.attrs).get("done"):
            return 0
        done_chunks, done_rows = self.committed()
        # One background thread stores and commits chunk i while the source produces chunk i+1;
        # it works strictly in order, so markers still only ever advance over stored chunks.
        with ThreadPoolExecutor(1, thread_name_prefix="featureforge-writer") as pool:
            self._pool = pool
            try:
                if self.source.random_access:
                    written = self._run_random_access(done_chunks)
                else:
                    written = self._run_stream(done_chunks, done_rows)
            finally:
                self._drain()
        return written

    # -- the two ways of producing rows -------------------------------------------------------
    def _run_random_access(self, done_chunks: int) -> int:
        written = 0
        for i in range(done_chunks, len(self.my_chunks)):
            chunk = self.my_chunks[i]
            start = chunk * self.store.rows_per_chunk
            stop = start + self.store.chunk_rows(chunk)
            batch = self.source.rows(start, stop)
            written += self._write_and_commit(chunk, batch, stop - start, i + 1, None, i + 1 == len(self.my_chunks))
        if not self.my_chunks:
            self._commit(0, last_chunk_rows=None, done=True)
        return written

    def _run_stream(self, done_chunks: int, done_rows: int) -> int:
        written = 0
        pending: list[dict[str, np.ndarray]] = []
        pending_rows = 0
        i = done_chunks
        if i >= len(self.my_chunks):  # a writer that owns no (more) chunks
            self._commit(i, last_chunk_rows=None, done=True)
            return 0
        shuffle = self.store.write_shuffle_rows
        if shuffle:
            first = done_rows // shuffle  # recompute the window the marker is in, from its start
            raw = self._open_stream(first * shuffle)
            batches: Iterator[Any] = shuffled_windows(raw, shuffle, self.rank, first, self.rows_to_write(), drop=done_rows - first * shuffle)
        else:
            batches = self._open_stream(done_rows)
        try:
            for batch in batches:
                batch = {k: as_numpy(v) for k, v in batch.items() if v is not None}
                pending.append(batch)
                pending_rows += len(batch["acts"])
                while i < len(self.my_chunks) and pending_rows >= self.store.chunk_rows(self.my_chunks[i]):
                    need = self.store.chunk_rows(self.my_chunks[i])
                    chunk_batch, pending = _take_rows(pending, need)
                    pending_rows -= need
                    written += self._write_and_commit(self.my_chunks[i], chunk_batch, need, i + 1, None, i + 1 == len(self.my_chunks))
                    i += 1
                if i >= len(self.my_chunks):
                    break  # every owned chunk is full: ask the source for nothing more
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if i < len(self.my_chunks):
            # The source ran dry: a last partial chunk, and this writer is done.
            if pending_rows:
                chunk_batch, _ = _take_rows(pending, pending_rows)
                written += self._write_and_commit(self.my_chunks[i], chunk_batch, pending_rows, i + 1, pending_rows, True)
            else:
                self._drain()
                self._commit(i, last_chunk_rows=None, done=True)
        return written

    def _open_stream(self, skip_rows: int) -> Iterator[Any]:
        """The source's stream from row ``skip_rows``, told how many rows are still wanted."""
        return self.source.stream(self.rank, self.world_size, skip_rows=skip_rows, max_rows=self.rows_to_write() - skip_rows)

    # -- one chunk ----------------------------------------------------------------------------
    def _write_and_commit(self, chunk: int, batch: dict[str, Any], n_rows: int, chunks: int, last_chunk_rows: int | None, done: bool) -> int:
        """Validate here, then store and commit on the writer thread after the previous chunk."""
        start = chunk * self.store.rows_per_chunk
        data = self._columns_of(batch)
        self._validate(data, start, n_rows)
        self._drain()
        self._pending = self._pool.submit(self._store_and_commit, chunk, data, n_rows, chunks, last_chunk_rows, done)
        return n_rows

    def _columns_of(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """A source's batch as store columns (each further site's rows renamed to its column)."""
        renamed = {self.site_keys.get(k, k): v for k, v in batch.items()}
        return {k: as_numpy(v) for k, v in renamed.items() if k in self.store.columns and v is not None}

    def _store_and_commit(self, chunk: int, data: dict[str, np.ndarray], n_rows: int, chunks: int, last_chunk_rows: int | None, done: bool) -> None:
        self._store_chunk(chunk, data, n_rows)
        self._commit(chunks, last_chunk_rows=last_chunk_rows, done=done)
        self.progress(n_rows)

    def _drain(self) -> None:
        """Wait for the chunk being stored (re-raising its error, e.g. a float16 overflow)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _store_chunk(self, chunk: int, data: dict[str, np.ndarray], n_rows: int) -> None:
        start = chunk * self.store.rows_per_chunk
        columns = self.store.columns
        rows = {}
        for name, logical in columns.items():
            values = data[name]
            if self.store.width(name) is not None:
                stored = to_storage(values, logical)
                if logical == "float16" and not np.isfinite(stored).all():
                    raise BadInputError(
                        f"rows {start}–{start + n_rows - 1} overflow float16 ({name} beyond ±65504); cache with --dtype bfloat16 or float32"
                    )
                if name in self.stats:  # statistics describe the rows as stored (after any rounding)
                    rows[name] = _chunk_stats(stored, logical)
            else:
                stored = values.astype(logical, copy=False)
            self.arrays[name][start : start + n_rows] = stored
        for name, stats in self.stats.items():  # every column of the chunk is written before its statistics
            stats[chunk] = rows[name]

    def _validate(self, data: dict[str, np.ndarray], start: int, n_rows: int) -> None:
        name = self.source.name
        site_of = {column: site for site, column in self.site_keys.items()}
        for column in self.store.columns:
            if column not in data:
                what = f"site {site_of[column]!r}" if column in site_of else f"{column!r} column"
                raise BadInputError(f"source {name!r} gave no {what} for rows {start}–{start + n_rows - 1}; the store expects it")
        acts = data["acts"]
        for site in self.store.site_records:
            values, d = data[site["column"]], int(site["d_in"])
            if values.ndim != 2 or values.shape != (n_rows, d):
                what = "acts" if site["column"] == "acts" else f"site {site['name']!r}"
                raise BadInputError(f"source {name!r} gave {what} of shape {tuple(values.shape)} for rows {start}–{start + n_rows - 1}; expected ({n_rows}, {d})")
        for column, values in data.items():
            if values.shape[0] != n_rows:
                raise BadInputError(f"source {name!r} gave {values.shape[0]} {column} for {n_rows} rows starting at row {start}")
            if self.store.width(column) is not None:
                if column == "grads" and values.shape != acts.shape:
                    raise BadInputError(f"source {name!r} gave grads of shape {tuple(values.shape)} but acts of shape {tuple(acts.shape)}; they must match")
                bad = ~np.isfinite(values).all(axis=1)
                if bad.any():
                    idx = np.flatnonzero(bad)
                    where = f"row {start + idx[0]}" if len(idx) == 1 else f"rows {start + idx[0]}–{start + idx[-1]} ({len(idx)} rows)"
                    raise BadInputError(
                        f"source {name!r} produced NaN/Inf {column} in {where}; "
                        "fix the source or its options and rerun; chunks committed so far are kept"
                    )

    def _commit(self, chunks: int, last_chunk_rows: int | None, done: bool) -> None:
        # zarr's LocalStore writes zarr.json through a temporary file and a rename: atomic. `put` writes it once;
        # `attrs.update` would write it once per key, and a kill between those writes leaves a torn marker.
        self.marker_group.attrs.put({"chunks": chunks, "last_chunk_rows": last_chunk_rows, "done": done})


_STATS_BLOCK = 256  # rows widened to float64 at a time: cache-sized, no chunk-sized temporaries


def _chunk_stats(stored: np.ndarray, logical: str) -> np.ndarray:
    """A chunk's float64 row of per-column sums, per-column sums of squares, and their total."""
    n, d = stored.shape
    sums = np.zeros(d, dtype=np.float64)
    squares = np.zeros(d, dtype=np.float64)
    block = np.empty((min(n, _STATS_BLOCK), d), dtype=np.float64)
    for start in range(0, n, _STATS_BLOCK):
        part = stored[start : start + _STATS_BLOCK]
        wide = block[: len(part)]
        wide[...] = to_float32(part, logical)
        sums += wide.sum(0)
        np.multiply(wide, wide, out=wide)
        squares += wide.sum(0)
    return np.concatenate([sums, squares, [squares.sum()]])


_WRITE_SHUFFLE_SEED = 0x5F_F1E5


def window_permutation(rank: int, window: int, rows: int) -> np.ndarray:
    """The order in which writer ``rank`` stores the rows of its window ``window`` (``rows`` long)."""
    return np.random.Generator(np.random.PCG64([_WRITE_SHUFFLE_SEED, rank, window])).permutation(rows)


def shuffled_windows(
    batches: Iterator[Any], window_rows: int, rank: int, first: int, total: int, drop: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Permute a row stream window by window (all columns alike), the first window being ``first``.

    ``batches`` starts at that window's first row; ``total`` is the writer's row count, where the
    last window ends (so a short store never asks the source for a whole window more). The first
    ``drop`` rows of the permuted stream (rows already committed) are not yielded. A window the
    source cannot fill is permuted over the rows it has.
    """
    pending: list[dict[str, np.ndarray]] = []
    have, window = 0, first

    def size() -> int:
        return min(window_rows, total - window * window_rows)

    def permuted(n: int) -> dict[str, np.ndarray]:
        nonlocal pending, have, window, drop
        rows, pending = _take_rows(pending, n)
        have -= n
        order = window_permutation(rank, window, n)[drop:]
        window, drop = window + 1, max(0, drop - n)
        return {key: np.take(value, order, axis=0) for key, value in rows.items()}

    try:
        for batch in batches:
            if size() <= 0:
                break
            batch = {k: as_numpy(v) for k, v in batch.items() if v is not None}
            pending.append(batch)
            have += len(batch["acts"])
            while size() > 0 and have >= size():
                yield permuted(size())
        if have and size() > 0:
            yield permuted(min(have, size()))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _take_rows(pending: list[dict[str, np.ndarray]], n: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """Split the first ``n`` rows off a list of batches."""
    taken: dict[str, list[np.ndarray]] = {}
    rest: list[dict[str, np.ndarray]] = []
    need = n
    for batch in pending:
        rows = len(batch["acts"])
        if need <= 0:
            rest.append(batch)
            continue
        k = min(need, rows)
        for key, value in batch.items():
            taken.setdefault(key, []).append(value[:k])
        if k < rows:
            rest.append({key: value[k:] for key, value in batch.items()})
        need -= k
    return {key: np.concatenate(parts) for key, parts in taken.items()}, rest
