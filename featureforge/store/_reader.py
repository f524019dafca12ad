"""ShuffledReader: reads a store out of core in shuffled order, with an exact, saveable cursor.

Each epoch the committed chunks are permuted (seeded by ``seed`` and the epoch) and dealt to
ranks round-robin. A rank's chunks are read a window at a time (``buffer_rows`` rows), rows
within a window are permuted, and batches are consecutive slices of that epoch stream. The cursor
is (epoch, rows yielded), so restoring it replays the same sequence without reading the skipped
windows.

The work happens off the consumer's thread, and each row is copied once:

* an I/O pool loads the next window while the current one is gathered. Local chunk files are
  mapped read-only, pre-faulted (``MAP_POPULATE``), back to back into one address range, so the
  page cache is read in place; remote stores, and chunks whose byte size is not a whole number of
  pages, are copied into reused window buffers with ``Location.read_chunk_into``;
* a gather pool (two threads) copies each batch's rows out of the window with ``numpy.take``
  (single-threaded per call, GIL released; torch's intra-op threads are not involved, which
  matters on small machines where they contend with everything else);
* a coordinating thread keeps a couple of batches in flight and hands them, in order, to the
  consumer through a short queue.

Memory: ``prefetch + 1`` windows (mapped or buffered) plus a few batches in flight, whatever the
store's size; window buffers are kept across epochs of one reader (page faults on fresh memory are
expensive on virtual machines).
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import platform
import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import BadInputError
from ._format import CHECKSUM_BYTES, STORAGE_DTYPES, VERIFIED, ChunkRef, chunk_checksum_ok, has_checksum, read_only_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ._view import ActivationStore

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_BATCH_QUEUE = 2  # finished batches waiting for the consumer
_IN_FLIGHT = 2  # batches being gathered at once
_PIECE_ROWS = 2048  # rows per gather job
GATHER_THREADS = max(1, min(2, os.cpu_count() or 1))  # copying rows is the reader's main work
# Local chunk files are mapped (read-only, pre-faulted) back to back into one address range per
# window, so the only copy of a row is the gather into its batch; elsewhere chunks are read into
# reused buffers. MAP_FIXED is 0x10 on these Linux architectures (not on all: hence the list).
USE_MMAP = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64") and hasattr(mmap, "MAP_POPULATE")
_MAP_FIXED = 0x10


class _NotMappable(Exception):
    """A chunk file that cannot be mapped as is (missing, wrong size): read it the ordinary way."""


class _Damaged(Exception):
    """A mapped chunk whose checksum does not match its bytes (the message says how)."""


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        self.munmap = libc.munmap
        self.munmap.restype = ctypes.c_int
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.failed = ctypes.c_void_p(-1).value


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


class _MappedWindow:
    """One column's chunk files of a window, mapped read-only one after another into one range.

    The range is reserved first (PROT_NONE) and each chunk is then mapped over its slot with
    MAP_FIXED | MAP_POPULATE (page tables filled from the page cache, reading the file if it is
    not cached). ``close`` unmaps the whole range; nothing may touch ``array`` after that.
    """

    def __init__(self, slots: int, chunk_nbytes: int):
        self.libc = _get_libc()
        self.chunk_nbytes = chunk_nbytes
        self.size = slots * chunk_nbytes
        base = self.libc.mmap(None, self.size, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base is None or base == self.libc.failed:
            raise OSError(ctypes.get_errno(), "mmap failed")
        self.base: int | None = base

    def map_chunk(self, slot: int, path: str, checksum: bool) -> None:
        """Map chunk file ``path`` into ``slot`` (runs on an I/O thread).

        With ``checksum`` the file ends in 4 more bytes, the crc32c of the mapped ones: it is
        checked the first time this process maps the file and whenever the file has changed since.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            raise _NotMappable(path) from None
        try:
            st = os.fstat(fd)
            if st.st_size != self.chunk_nbytes + (CHECKSUM_BYTES if checksum else 0):
                raise _NotMappable(path)
            want = self.base + slot * self.chunk_nbytes
            got = self.libc.mmap(want, self.chunk_nbytes, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED | mmap.MAP_POPULATE, fd, 0)
            if got != want:  # keep the slot reserved, so close() unmaps only what is ours
                self.libc.mmap(want, self.chunk_nbytes, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED, -1, 0)
                raise _NotMappable(path)
            if checksum and not VERIFIED.known(path, st):
                payload = np.frombuffer((ctypes.c_char * self.chunk_nbytes).from_address(want), dtype=np.uint8)
                if not chunk_checksum_ok(read_only_bytes(payload), os.pread(fd, CHECKSUM_BYTES, self.chunk_nbytes)):
                    raise _Damaged("fails its checksum (its bytes changed after they were written)")
                VERIFIED.add(path, st)
        finally:
            os.close(fd)

    def array(self, dtype: np.dtype, width: int | None) -> np.ndarray:
        raw = (ctypes.c_char * self.size).from_address(self.base)
        arr = np.frombuffer(raw, dtype=dtype)
        return arr.reshape(-1, width) if width else arr

    def close(self) -> None:
        if self.base is not None:
            self.libc.munmap(self.base, self.size)
            self.base = None


class ShuffledReader:
    """Iterate one epoch of batches (dicts of torch tensors) per ``iter()``; see module doc."""

    def __init__(
        self,
        store: ActivationStore,
        batch_size: int = 4096,
        *,
        columns: Sequence[str] = ("acts",),
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        buffer_rows: int | None = None,
        prefetch: int = 1,
        io_threads: int = 4,
        drop_last: bool = False,
        chunks: Sequence[ChunkRef] | None = None,
    ):
        missing = [c for c in columns if c not in store.columns]
        if missing:
            raise BadInputError(f"store {store.url} has no column(s) {', '.join(missing)}; it has: {', '.join(store.columns)}")
        if batch_size <= 0:
            raise BadInputError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise BadInputError(f"rank {rank} is outside world size {world_size}")
        self.store = store
        self.batch_size = int(batch_size)
        self.columns = tuple(columns)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.chunks = list(chunks) if chunks is not None else store.committed_chunks()
        rpc = store.rows_per_chunk
        self.chunks_per_window = max(1, (buffer_rows or max(8 * rpc, 65536)) // rpc)
        self.prefetch = max(1, prefetch)
        self.io_threads = max(1, io_threads)
        self.drop_last = drop_last
        self.epoch = 0
        self.row = 0  # rows of this rank's current epoch already yielded
        self._arrays = {name: store.array(name) for name in self.columns}
        self._checksum = {name: has_checksum(arr) for name, arr in self._arrays.items()}
        self._layout = {name: self._column_layout(name) for name in self.columns}
        largest = sorted((c.rows for c in self.chunks), reverse=True)[: self.chunks_per_window]
        self.window_capacity = max(1, sum(largest))  # rows of one window buffer
        self._spare: list[dict[str, np.ndarray]] | None = None  # window buffers kept between epochs

    def _column_layout(self, name: str) -> tuple[np.dtype, int | None]:
        logical = self.store.columns[name]
        return np.dtype(STORAGE_DTYPES.get(logical, logical)), self.store.width(name)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the window buffers this reader holds while iterating (batches in flight extra)."""
        row = sum(dt.itemsize * (width or 1) for dt, width in self._layout.values())
        return (self.prefetch + 1) * self.window_capacity * row

    # -- cursor -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The cursor: restoring it continues with exactly the batch that would come next."""
        return {"epoch": self.epoch, "row": self.row, "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("world_size", self.world_size) != self.world_size or state.get("seed", self.seed) != self.seed:
            raise BadInputError("reader cursor was saved with another seed or world size; resume with the same settings")
        self.epoch = int(state["epoch"])
        self.row = int(state["row"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.row = int(epoch), 0

    # -- plan of an epoch ---------------------------------------------------------------------
    def epoch_chunks(self, epoch: int) -> list[ChunkRef]:
        """This rank's chunks for ``epoch``, in reading order."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0x5EED]))
        order = rng.permutation(len(self.chunks))
        return [self.chunks[i] for i in order[self.rank :: self.world_size]]

    def rows_in_epoch(self, epoch: int | None = None) -> int:
        return sum(c.rows for c in self.epoch_chunks(self.epoch if epoch is None else epoch))

    def __len__(self) -> int:
        rows = self.rows_in_epoch()
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def _windows(self, epoch: int) -> list[list[ChunkRef]]:
        chunks = self.epoch_chunks(epoch)
        k = self.chunks_per_window
        return [chunks[i : i + k] for i in range(0, len(chunks), k)]

    # -- loading ------------------------------------------------------------------------------
    def _mappable(self, name: str) -> bool:
        storage, width = self._layout[name]
        nbytes = self.store.rows_per_chunk * (width or 1) * storage.itemsize
        return USE_MMAP and not self.store.location.remote and sys.byteorder == "little" and nbytes % mmap.PAGESIZE == 0

    def _new_buffers(self) -> list[dict[str, np.ndarray]]:
        """Window buffer sets for columns read by copy; each column's buffer is made when first needed."""
        return [{} for _ in range(self.prefetch + 1)]

    def _buffer(self, bufs: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name not in bufs:
            dt, w = self._layout[name]
            bufs[name] = np.empty((self.window_capacity, w) if w else (self.window_capacity,), dtype=dt)
        return bufs[name]

    def _chunk_key(self, name: str, ref: ChunkRef) -> str:
        coords = (ref.index, 0) if self._layout[name][1] else (ref.index,)
        return f"{self.store.array_name(name)}/{self._arrays[name].metadata.encode_chunk_key(coords)}"

    def _read_column(self, pool: ThreadPoolExecutor, name: str, refs: list[ChunkRef], buf: np.ndarray) -> list[Future]:
        """Start copying a window's chunks of one column into ``buf`` (rows in chunk order)."""
        rpc = self.store.rows_per_chunk
        storage, width = self._layout[name]
        chunk_nbytes = rpc * (width or 1) * storage.itemsize
        futures, offset = [], 0
        for ref in refs:
            futures.append(pool.submit(self._copy_chunk, name, ref, buf[offset : offset + ref.rows], chunk_nbytes))
            offset += ref.rows
        return futures

    def _copy_chunk(self, name: str, ref: ChunkRef, out: np.ndarray, chunk_nbytes: int) -> None:
        key = self._chunk_key(name, ref)
        problem = self.store.location.read_chunk_into(key, out, chunk_nbytes, self._checksum[name])
        if problem:
            raise self.store.damage_error(key, self.store.rows_text(ref.index), problem, ref.index)

    def _start_window(
        self, pool: ThreadPoolExecutor, epoch: int, index: int, refs: list[ChunkRef], bufs: dict[str, np.ndarray], live: list[_MappedWindow]
    ) -> dict[str, Any]:
        """Start loading window ``index``: map (or copy) every column's chunks, and draw its permutation, on the I/O pool."""
        rpc = self.store.rows_per_chunk
        mapped: dict[str, _MappedWindow] = {}
        futures: list[tuple[str, ChunkRef | None, Future]] = []
        for name in self.columns:
            storage, width = self._layout[name]
            if self._mappable(name):
                try:
                    window = _MappedWindow(len(refs), rpc * (width or 1) * storage.itemsize)
                except (OSError, AttributeError):  # no address space or no libc mmap: copy instead
                    window = None
                if window is not None:
                    live.append(window)
                    mapped[name] = window
                    for slot, ref in enumerate(refs):
                        path = self.store.location.key_path(self._chunk_key(name, ref))
                        futures.append((name, ref, pool.submit(window.map_chunk, slot, path, self._checksum[name])))
                    continue
            futures.extend((name, None, fut) for fut in self._read_column(pool, name, refs, self._buffer(bufs, name)))
        perm = pool.submit(self._window_perm, epoch, index, sum(r.rows for r in refs))
        return {"refs": refs, "bufs": bufs, "mapped": mapped, "futures": futures, "perm": perm}

    def _finish_window(self, pool: ThreadPoolExecutor, state: dict[str, Any], live: list[_MappedWindow]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
        """Wait for a window; returns per column the rows' source array and the row index map."""
        refs, bufs, mapped = state["refs"], state["bufs"], state["mapped"]
        unmappable: set[str] = set()
        error: BaseException | None = None
        for name, ref, fut in state["futures"]:  # wait for all before touching any mapping
            try:
                fut.result()
            except _NotMappable:
                unmappable.add(name)
            except _Damaged as exc:
                key = self._chunk_key(name, ref)
                error = error or self.store.damage_error(key, self.store.rows_text(ref.index), str(exc), ref.index)
            except BaseException as exc:
                error = error or exc
        for name in unmappable:  # a missing or odd-sized chunk file: read_chunk_into explains it
            window = mapped.pop(name)
            live.remove(window)
            window.close()
            for fut in self._read_column(pool, name, refs, self._buffer(bufs, name)):
                fut.result()
        if error is not None:
            raise error
        rpc = self.store.rows_per_chunk
        sources: dict[str, np.ndarray] = {}
        rowmaps: dict[str, np.ndarray | None] = {}
        slotted = None
        if mapped and any(ref.rows != rpc for ref in refs[:-1]):  # rows of a short chunk end before its slot does
            slotted = np.concatenate([np.arange(ref.rows) + slot * rpc for slot, ref in enumerate(refs)])
        for name in self.columns:
            if name in mapped:
                sources[name] = mapped[name].array(*self._layout[name])
                rowmaps[name] = slotted
            else:
                sources[name] = bufs[name]
                rowmaps[name] = None
        return sources, rowmaps

    def _window_perm(self, epoch: int, index: int, rows: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch, index))
        return torch.randperm(rows, generator=gen).numpy()

    def _new_batch(self) -> dict[str, np.ndarray]:
        n = self.batch_size
        return {name: np.empty((n, w) if w else (n,), dtype=dt) for name, (dt, w) in self._layout.items()}

    def _tensors(self, batch: dict[str, np.ndarray], rows: int) -> dict[str, torch.Tensor]:
        return {name: _as_tensor(arr[:rows], self.store.columns[name]) for name, arr in batch.items()}

    def _producer(
        self,
        epoch: int,
        windows: list[list[ChunkRef]],
        first: int,
        skip: int,
        buffers: list[dict[str, np.ndarray]],
        out: queue.Queue,
        stop: threading.Event,
    ) -> None:
        live: list[_MappedWindow] = []  # mapped ranges not yet unmapped
        try:
            try:
                with ThreadPoolExecutor(self.io_threads, thread_name_prefix="featureforge-read") as io:
                    with ThreadPoolExecutor(GATHER_THREADS, thread_name_prefix="featureforge-gather") as gather:
                        if not self._run(io, gather, epoch, windows, first, skip, buffers, out, stop, live):
                            return
            finally:  # both pools have finished every job: nothing maps into or reads a range now
                for window in live:
                    window.close()
            _put(out, None, stop)
        except BaseException as exc:  # surfaced in the consumer
            _put(out, exc, stop)

    def _run(self, io, gather, epoch, windows, first, skip, buffers, out, stop, live) -> bool:  # noqa: ANN001
        """Load windows ahead, gather batches on the gather pool, ship them in order.

        Returns False when the consumer went away.
        """
        free = list(buffers)
        loading: collections.deque = collections.deque()
        upcoming = first

        def load_next() -> None:
            nonlocal upcoming
            loading.append(self._start_window(io, epoch, upcoming, windows[upcoming], free.pop(), live))
            upcoming += 1

        inflight: collections.deque = collections.deque()  # (arrays, rows, futures) in batch order

        def ship(keep: int) -> bool:
            while len(inflight) > keep:
                arrays, rows, futures = inflight.popleft()
                for fut in futures:
                    fut.result()
                if not _put(out, (self._tensors(arrays, rows), rows), stop):
                    return False
            return True

        while upcoming < len(windows) and free:
            load_next()
        batch: dict[str, np.ndarray] | None = None
        have = 0
        jobs: list[Future] = []
        while loading:
            state = loading.popleft()
            sources, rowmaps = self._finish_window(io, state, live)
            perm = state["perm"].result()
            window_jobs: list[Future] = []
            pos, skip = skip, 0
            while pos < len(perm):
                if stop.is_set():
                    return False
                if batch is None:
                    batch, have, jobs = self._new_batch(), 0, []
                take = min(self.batch_size - have, len(perm) - pos)
                for lo in range(0, take, _PIECE_ROWS):
                    idx = perm[pos + lo : pos + min(take, lo + _PIECE_ROWS)]
                    for name, dst in batch.items():
                        rowmap = rowmaps[name]
                        rows = idx if rowmap is None else rowmap[idx]
                        window_jobs.append(gather.submit(_take, sources[name], rows, dst[have + lo : have + lo + len(idx)]))
                        jobs.append(window_jobs[-1])
                have += take
                pos += take
                if have == self.batch_size:
                    inflight.append((batch, have, jobs))
                    batch = None
                    if not ship(_IN_FLIGHT - 1):
                        return False
            for fut in window_jobs:  # every row of the window is copied out: release it
                fut.result()
            del sources
            for window in state["mapped"].values():
                live.remove(window)
                window.close()
            free.append(state["bufs"])
            if upcoming < len(windows):
                load_next()
        if batch is not None and have and not self.drop_last:
            inflight.append((batch, have, jobs))
        return ship(0)

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        windows = self._windows(epoch)
        sizes = [sum(r.rows for r in w) for w in windows]
        # Find the window holding the cursor without reading any skipped window.
        first, skip = 0, self.row
        while first < len(windows) and skip >= sizes[first]:
            skip -= sizes[first]
            first += 1
        buffers, self._spare = self._spare or self._new_buffers(), None
        out: queue.Queue = queue.Queue(maxsize=_BATCH_QUEUE)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._producer, args=(epoch, windows, first, skip, buffers, out, stop), daemon=True, name="featureforge-shuffle"
        )
        thread.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch, rows = item
                self.row += rows
                yield batch
            self.epoch, self.row = epoch + 1, 0
        finally:
            stop.set()
            thread.join(timeout=5)
            if not thread.is_alive():  # no read can still be writing into the buffers
                self._spare = buffers


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Hand ``item`` to the consumer unless it has gone away; False when it has."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _take(source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    # mode="clip" skips numpy's buffered bounds check (rows index a permutation of the window)
    np.take(source, rows, axis=0, out=out, mode="clip")


def _mix(*values: int) -> int:
    seq = np.random.SeedSequence(list(values))
    return int(seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)


def _as_tensor(arr: np.ndarray, logical: str) -> torch.Tensor:
    if logical == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    if arr.dtype == np.uint32:
        return torch.from_numpy(arr.view(np.int32))
    if arr.dtype == np.uint16:
        return torch.from_numpy(arr.view(np.int16))
    return torch.from_numpy(arr)
