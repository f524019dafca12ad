"""The store format's constants, its dtype codec and its chunk checksums (a leaf: imports no featureforge module).

Both the read view (``_view``, ``_reader``) and the write side (``_creation``,
``_writer``) need these; keeping them here lets those modules import each other one way only.

Chunk checksums (format version 2) are zarr v3's own ``crc32c`` codec, the last codec of every
array: a chunk file holds the chunk's raw little-endian bytes followed by 4 bytes, the CRC-32C of
those bytes as a little-endian uint32 (zarr v3 spec, "crc32c" codec). zarr checks it when it
decodes a chunk; the fast reader, which reads chunk files itself, checks it with
:func:`chunk_checksum_ok`. Version 1 stores have no checksum and are read as before.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT_VERSION = 2
FORMAT_NAME = "featureforge-activations"
CHECKSUM = "crc32c"
CHECKSUM_BYTES = 4
STORAGE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
ACT_COLUMNS = ("acts", "grads")
DEFAULT_CHUNK_BYTES = 16 * 2**20
WRITE_CONFIG = {"write_empty_chunks": True}  # the raw reader expects every committed chunk on disk
# Everything featureforge writes at a store's top level; `--overwrite` deletes only these.
STORE_MEMBERS = frozenset({"zarr.json", "acts", "grads", "token_ids", "doc_ids", "positions", "seq_ids", "chunk_stats", "writers", "ground_truth"})


# -- sites ----------------------------------------------------------------------------------------
# A multi-site store keeps one activation column per site (docs/store.md, "Several sites"): site 0's
# rows are ``acts`` (so code that knows nothing of sites reads a valid store), site i > 0's are
# ``acts_<i>``; each site's chunk statistics are ``chunk_stats`` / ``chunk_stats_<i>`` alike.
SITE_COLUMN_PREFIX = "acts_"
SITE_STATS_PREFIX = "chunk_stats_"


def site_column(index: int) -> str:
    """The store column holding site ``index``'s rows."""
    return "acts" if index == 0 else f"{SITE_COLUMN_PREFIX}{index}"


def site_stats(index: int) -> str:
    """The array holding site ``index``'s per-chunk statistics."""
    return "chunk_stats" if index == 0 else f"{SITE_STATS_PREFIX}{index}"


def site_members(sites: list[dict[str, Any]] | None) -> set[str]:
    """The store members of the sites after the first (their columns and statistics arrays)."""
    return {name for site in (sites or [])[1:] for name in (site["column"], site["stats"])}


def default_rows_per_chunk(d_in: int, dtype: str) -> int:
    """About 16 MiB of activations per chunk, a power of two between 256 and 65536 rows."""
    itemsize = 4 if dtype == "float32" else 2
    rows = DEFAULT_CHUNK_BYTES / (d_in * itemsize)
    return int(min(65536, max(256, 2 ** round(math.log2(rows)))))


#: Bytes a writer may buffer for its write-side shuffle window (the window's rows are held in memory).
WRITE_SHUFFLE_BYTES = 512 * 2**20
#: Rows of a write-side shuffle window at most: 1,024 sequences of 128 tokens, enough for batches
#: about as mixed as uniform sampling (docs/store.md, "Write-side shuffle").
WRITE_SHUFFLE_MAX_ROWS = 131072
WRITE_SHUFFLE_MIN_ROWS = 16384


def default_write_shuffle_rows(d_in: int, dtype: str, grads: bool = False) -> int:
    """Rows of a stream source's write-side shuffle window: a power of two, at most ``WRITE_SHUFFLE_BYTES``.

    A function of the row's width only (never of the chunk size), so a store's bytes do not
    depend on how it is chunked.
    """
    row_bytes = d_in * (4 if dtype == "float32" else 2) * (2 if grads else 1)
    rows = 2 ** int(math.floor(math.log2(max(1, WRITE_SHUFFLE_BYTES // row_bytes))))
    return int(min(WRITE_SHUFFLE_MAX_ROWS, max(WRITE_SHUFFLE_MIN_ROWS, rows)))


@dataclass(frozen=True)
class ChunkRef:
    """A committed chunk: its index and how many of its rows hold data."""

    index: int
    rows: int


# -- dtype codec ----------------------------------------------------------------------------------
def to_storage(acts: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float32 rows to the storage dtype (bfloat16 rounds to nearest even, kept as uint16)."""
    if dtype == "float32":
        return np.ascontiguousarray(acts, dtype=np.float32)
    if dtype == "float16":
        return acts.astype(np.float16)
    # Round to nearest even on the upper 16 bits of the float32 pattern: bit-identical to torch's
    # float32 -> bfloat16 cast for finite values and infinities (NaN rows are refused earlier).
    bits = np.ascontiguousarray(acts, dtype=np.float32).view(np.uint32)
    bias = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + bias) >> 16).astype(np.uint16)


def to_float32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False)


# -- checksums ------------------------------------------------------------------------------------
def array_codecs(checksum: bool) -> dict[str, Any]:
    """``create_array`` arguments of a store array: uncompressed, with or without the crc32c codec."""
    from zarr.codecs import Crc32cCodec

    return {"compressors": [Crc32cCodec()] if checksum else None}


def has_checksum(array: Any) -> bool:
    """Whether a zarr array's chunks end in a crc32c checksum."""
    codecs = getattr(array.metadata, "codecs", ())
    return any(type(c).__name__ == "Crc32cCodec" for c in codecs)


def crc32c(data: Any, value: int = 0) -> int:
    """CRC-32C of a buffer (continuing ``value``); the GIL is released for large buffers."""
    import google_crc32c

    return int(google_crc32c.extend(value, data))


def read_only_bytes(arr: np.ndarray) -> np.ndarray:
    """A read-only uint8 view of ``arr`` (what google_crc32c accepts without a copy)."""
    view = arr.reshape(-1).view(np.uint8)
    view.flags.writeable = False
    return view


def stored_checksum(trailer: bytes) -> int:
    return int(np.frombuffer(trailer, dtype="<u4")[0])


def chunk_checksum_ok(payload: np.ndarray, trailer: bytes) -> bool:
    """Whether ``payload`` (a chunk's bytes, read-only uint8) matches its 4-byte trailer."""
    return len(trailer) == CHECKSUM_BYTES and crc32c(payload) == stored_checksum(trailer)


class VerifiedFiles:
    """Chunk files whose checksum this process has verified, by path and file identity.

    A file is checked again when its inode, size, modification or change time differ (any write
    changes the change time, which no program can set back), so a chunk is verified the first time
    it is read in a process and after every change, and later epochs read it at full speed.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def identity(st: os.stat_result) -> tuple[int, int, int, int]:
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def known(self, path: str, st: os.stat_result) -> bool:
        with self._lock:
            return self._seen.get(path) == self.identity(st)

    def add(self, path: str, st: os.stat_result) -> None:
        with self._lock:
            self._seen[path] = self.identity(st)

    def forget(self, path: str) -> None:
        with self._lock:
            self._seen.pop(path, None)


VERIFIED = VerifiedFiles()
