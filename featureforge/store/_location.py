"""Where a store lives: a local folder or any fsspec URL, and raw access to its chunk bytes.

zarr-python keeps the format and metadata; for the hot path the reader fetches uncompressed
chunk bytes itself (``readinto`` a preallocated buffer, many in flight), because zarr 3.1's
per-chunk indexing is several times slower than the disk (see DESIGN.md, "The store").
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ._format import CHECKSUM_BYTES, crc32c, read_only_bytes, stored_checksum


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


class Location:
    """A store's root: builds the zarr store object and reads raw chunk files."""

    def __init__(self, location: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        self.text = str(location)
        self.storage_options = dict(storage_options or {})
        self.remote = is_url(self.text)
        if self.remote:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.text, **self.storage_options)
            self.root = self.root.rstrip("/")
        else:
            path = self.text[len("file://") :] if self.text.startswith("file://") else self.text
            self.fs = None
            self.root = str(Path(path).expanduser().absolute())

    def __str__(self) -> str:
        return self.text

    def zarr_store(self, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore, LocalStore

        if self.remote:
            return FsspecStore.from_url(self.text, storage_options=self.storage_options or None, read_only=read_only)
        return LocalStore(self.root, read_only=read_only)

    def key_path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.remote else os.path.join(self.root, key)

    def exists(self, key: str = "zarr.json") -> bool:
        if self.remote:
            return bool(self.fs.exists(self.key_path(key)))
        return os.path.exists(self.key_path(key))

    def occupied(self) -> bool:
        """Something other than a store is already at this location (never overwritten)."""
        if self.exists():
            return False
        if self.remote:
            return bool(self.fs.exists(self.root)) and bool(self.fs.ls(self.root))
        return os.path.isdir(self.root) and bool(os.listdir(self.root)) or os.path.isfile(self.root)

    def entries(self) -> list[str]:
        """Names at the store's top level (empty when the location does not exist)."""
        if self.remote:
            if not self.fs.exists(self.root):
                return []
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))
        return sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []

    def remove_members(self, members: frozenset[str] | set[str]) -> None:
        """Delete a store's own top-level members (``--overwrite``), refusing if anything else is there.

        Only what featureforge writes is removed, so a store path pointed at a folder that also
        holds other files (a thesis, a checkpoint) loses nothing: the whole call is refused first.
        """
        names = self.entries()
        foreign = [n for n in names if n not in members]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise StoreError(
                f"{self.text} holds {shown}, which featureforge did not write; --overwrite deletes only a store's own files, "
                "so move those away or choose another --store"
            )
        for name in names:
            path = self.key_path(name)
            if self.remote:
                self.fs.rm(path, recursive=True)
            elif os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)

    def check_writable(self) -> None:
        """Fail early, in one line, when the store cannot be written where asked."""
        if self.remote:
            return
        probe = Path(self.root)
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write a store at {self.root}: {probe} is not a writable folder; choose another --store path")

    def read_bytes(self, key: str) -> bytes:
        """A whole file of the store (raises FileNotFoundError when it is absent)."""
        if self.remote:
            return bytes(self.fs.cat_file(self.key_path(key)))
        with open(self.key_path(key), "rb") as f:
            return f.read()

    def read_chunk_into(self, key: str, out: np.ndarray, payload_nbytes: int, checksum: bool) -> str | None:
        """Fill ``out`` (C-contiguous) with the leading bytes of chunk ``key``; returns what is wrong, or None.

        ``payload_nbytes`` is the full chunk's data size (zarr pads edge chunks); with ``checksum``
        the file holds 4 more bytes, the crc32c of the payload, checked here. A file of any other
        size is truncated or foreign, and a missing one was never committed properly.
        """
        view = memoryview(out).cast("B")
        trailer = CHECKSUM_BYTES if checksum else 0
        want = payload_nbytes + trailer
        path = self.key_path(key)
        rest = b""
        try:
            if self.remote:
                data = self.fs.cat_file(path)
                size = len(data)
                if size == want:
                    view[:] = data[: view.nbytes]
                    rest = data[view.nbytes :]
            else:
                with open(path, "rb", buffering=0) as f:
                    size = os.fstat(f.fileno()).st_size
                    if size == want:
                        got = f.readinto(view)
                        if got != view.nbytes:
                            size = got
                        elif trailer:
                            rest = f.read()
        except FileNotFoundError:
            return "is missing"
        if size != want:
            return f"is truncated or damaged ({size} bytes, expected {want})"
        if trailer:
            crc = crc32c(read_only_bytes(out)) if out.nbytes else 0
            if len(rest) > trailer:
                crc = crc32c(rest[:-trailer], crc)
            if len(rest) < trailer or crc != stored_checksum(rest[-trailer:]):
                return "fails its checksum (its bytes changed after they were written)"
        if sys.byteorder != "little":  # zarr's `bytes` codec is configured little-endian
            out.byteswap(inplace=True)
        return None
