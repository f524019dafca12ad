"""ShuffledReader: reads a store out of core in shuffled order, with an exact, saveable cursor.

Each epoch the committed chunks are permuted (seeded by ``seed`` and the epoch) and dealt to
ranks round-robin. A rank's chunks are read a window at a time (``buffer_rows`` rows, on a
background thread, several chunk reads in flight), rows within a window are permuted, and batches
are consecutive slices of that epoch stream. The cursor is (epoch, rows yielded), so restoring it
replays the same sequence without reading the skipped windows. Memory: at most ``prefetch + 2``
windows, whatever the store's size.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import BadInputError
from .store import ACT_COLUMNS, STORAGE_DTYPES, ActivationStore, ChunkRef

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class _Window:
    index: int
    rows: int
    data: dict[str, np.ndarray]
    perm: torch.Tensor


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
        self._arrays = {name: store.group[name] for name in self.columns}

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
    def _load_window(self, pool: ThreadPoolExecutor, epoch: int, index: int, refs: list[ChunkRef]) -> _Window:
        total = sum(r.rows for r in refs)
        data: dict[str, np.ndarray] = {}
        futures = []
        for name in self.columns:
            arr = self._arrays[name]
            logical = self.store.columns[name]
            storage = np.dtype(STORAGE_DTYPES.get(logical, logical))
            width = self.store.d_in if name in ACT_COLUMNS else 1
            buf = np.empty((total, width) if name in ACT_COLUMNS else (total,), dtype=storage)
            data[name] = buf
            chunk_nbytes = self.store.rows_per_chunk * width * storage.itemsize
            offset = 0
            for ref in refs:
                key = f"{name}/{arr.metadata.encode_chunk_key((ref.index, 0) if name in ACT_COLUMNS else (ref.index,))}"
                what = f"rows {ref.index * self.store.rows_per_chunk}–{ref.index * self.store.rows_per_chunk + ref.rows - 1}"
                futures.append(pool.submit(self.store.location.read_chunk_into, key, buf[offset : offset + ref.rows], chunk_nbytes, what))
                offset += ref.rows
        for fut in futures:
            fut.result()
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch, index))
        perm = torch.randperm(total, generator=gen)
        return _Window(index, total, data, perm)

    def _producer(self, epoch: int, windows: list[list[ChunkRef]], first: int, out: queue.Queue, stop: threading.Event) -> None:
        try:
            with ThreadPoolExecutor(self.io_threads) as pool:
                for index in range(first, len(windows)):
                    if stop.is_set():
                        return
                    window = self._load_window(pool, epoch, index, windows[index])
                    while not stop.is_set():
                        try:
                            out.put(window, timeout=0.1)
                            break
                        except queue.Full:
                            continue
            out.put(None)
        except BaseException as exc:  # surfaced in the consumer
            out.put(exc)

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
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._producer, args=(epoch, windows, first, out, stop), daemon=True)
        thread.start()
        parts: list[dict[str, torch.Tensor]] = []
        have = 0
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                window: _Window = item
                tensors = {name: _as_tensor(arr, self.store.columns[name]) for name, arr in window.data.items()}
                pos = skip
                skip = 0
                while pos < window.rows:
                    take = min(self.batch_size - have, window.rows - pos)
                    idx = window.perm[pos : pos + take]
                    parts.append({name: t.index_select(0, idx) for name, t in tensors.items()})
                    have += take
                    pos += take
                    if have == self.batch_size:
                        batch = _concat(parts)
                        parts, have = [], 0
                        self.row += self.batch_size
                        yield batch
            if have and not self.drop_last:
                self.row += have
                yield _concat(parts)
            self.epoch, self.row = epoch + 1, 0
        finally:
            stop.set()
            thread.join(timeout=5)


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


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
