"""The activation store: a Zarr v3 group of fixed-size chunks of rows, written once and read shuffled.

Modules, one job each: ``_format`` (the on-disk layout, dtypes and checksums), ``_location``
(local paths and fsspec URLs), ``_creation`` (creating, checking and repairing a store's
metadata), ``_writer`` (caching a source's rows chunk by chunk, resumable), ``_view`` (the
read-only ``ActivationStore``), ``_reader`` (the chunk-shuffled, prefetching training reader) and
``_holdout`` (the chunks held out of training and the rows an evaluation reads).
"""

from typing import Any

from ._creation import StoreSpec, finalize, prepare_store, writer_lock
from ._format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    STORAGE_DTYPES,
    VERIFIED,
    ChunkRef,
    default_rows_per_chunk,
    default_write_shuffle_rows,
)
from ._holdout import DEFAULT_EVAL_ROWS, EvalRows, auto_batch_size, same_store, select_eval_rows, split_chunks
from ._location import Location
from ._view import ActivationStore, open_store
from ._writer import StoreWriter

__all__ = [
    "DEFAULT_EVAL_ROWS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "STORAGE_DTYPES",
    "VERIFIED",
    "ActivationStore",
    "ChunkRef",
    "EvalRows",
    "Location",
    "ShuffledReader",
    "StoreSpec",
    "StoreWriter",
    "auto_batch_size",
    "default_rows_per_chunk",
    "default_write_shuffle_rows",
    "finalize",
    "open_store",
    "prepare_store",
    "same_store",
    "select_eval_rows",
    "split_chunks",
    "writer_lock",
]


def __getattr__(name: str) -> Any:
    # The reader needs torch; loaded on first use so that opening or describing a store does not.
    if name == "ShuffledReader":
        from ._reader import ShuffledReader

        return ShuffledReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
