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

from .errors import CorruptStoreError, StoreError


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

    def remove_all(self) -> None:
        """Delete the whole store (``--overwrite``)."""
        if self.remote:
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
        elif os.path.exists(self.root):
            shutil.rmtree(self.root)

    def check_writable(self) -> None:
        """Fail early, in one line, when the store cannot be written where asked."""
        if self.remote:
            return
        probe = Path(self.root)
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write a store at {self.root}: {probe} is not a writable folder; choose another --store path")

    def read_chunk_into(self, key: str, out: np.ndarray, chunk_nbytes: int, what: str) -> None:
        """Fill ``out`` (C-contiguous) with the leading bytes of chunk ``key``.

        ``chunk_nbytes`` is the full chunk size zarr writes (edge chunks are padded); a file of
        any other size is truncated or foreign, and a missing one was never committed properly.
        """
        view = memoryview(out).cast("B")
        path = self.key_path(key)
        try:
            if self.remote:
                data = self.fs.cat_file(path)
                size = len(data)
                if size == chunk_nbytes:
                    view[:] = data[: view.nbytes]
            else:
                with open(path, "rb", buffering=0) as f:
                    size = os.fstat(f.fileno()).st_size
                    if size == chunk_nbytes:
                        got = f.readinto(view)
                        if got != view.nbytes:
                            size = got
        except FileNotFoundError:
            raise CorruptStoreError(
                f"store {self.text}: chunk {key} ({what}) is missing; rerun the same `featureforge cache` command to rewrite it"
            ) from None
        if size != chunk_nbytes:
            raise CorruptStoreError(
                f"store {self.text}: chunk {key} ({what}) is truncated or damaged ({size} bytes, expected {chunk_nbytes}); "
                "delete that file and rerun the same `featureforge cache` command to rewrite it"
            )
        if sys.byteorder != "little":  # zarr's `bytes` codec is configured little-endian
            out.byteswap(inplace=True)
