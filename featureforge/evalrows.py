"""Which rows an evaluation reads: the run's held-out chunks on its own store, else the store's
first committed rows; read in storage order, in bounded batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import BadInputError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    from .store import ActivationStore, ChunkRef

__all__ = ["DEFAULT_EVAL_ROWS", "EvalRows", "auto_batch_size", "same_store", "select_eval_rows"]

#: Rows evaluated when the run has no held-out chunks on the given store.
DEFAULT_EVAL_ROWS = 65536


@dataclass
class EvalRows:
    """The eval rows: parts of committed chunks, read in storage order in bounded batches."""

    store: "ActivationStore"
    #: (chunk index, rows of it used) in reading order.
    parts: list[tuple[int, int]]
    #: "holdout" (the run's held-out chunks) or "first_rows" (the store's first committed rows).
    selection: str

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def chunks(self) -> list[int]:
        return [c for c, _ in self.parts]

    def blocks(self, batch_size: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (global row index of the first row, acts float32 [b, d]) with b ≤ batch_size.

        Global row index = chunk index × rows_per_chunk + offset in the chunk, the index the
        store's source gave the row (what ``SyntheticSource.codes`` takes).
        """
        rpc = self.store.rows_per_chunk
        for chunk, n in self.parts:
            base = chunk * rpc
            for start in range(base, base + n, batch_size):
                stop = min(base + n, start + batch_size)
                yield start, self.store.read(start, stop)

    def describe(self) -> dict[str, Any]:
        return {"rows": self.rows, "selection": self.selection, "chunks": self.chunks}


def _take(chunks: Sequence["ChunkRef"], limit: int | None) -> list[tuple[int, int]]:
    parts: list[tuple[int, int]] = []
    left = math.inf if limit is None else int(limit)
    for ref in chunks:
        if left <= 0:
            break
        n = int(min(ref.rows, left))
        parts.append((ref.index, n))
        left -= n
    return parts


def same_store(run_config: Mapping[str, Any], store: "ActivationStore") -> bool:
    """Whether ``store`` is the one the run was trained on (the rule is :func:`featureforge.run.store_matches`)."""
    from .run import store_matches

    return store_matches(run_config.get("store"), store)


def select_eval_rows(store: "ActivationStore", run_config: Mapping[str, Any] | None = None, rows: int | None = None) -> EvalRows:
    """The run's held-out chunks if ``store`` is its store, else the first ``rows`` committed rows.

    ``rows`` (default ``DEFAULT_EVAL_ROWS``) also caps the held-out rows when given.
    """
    from .holdout import chunks_by_index

    if rows is not None and int(rows) <= 0:
        raise OptionError(f"--rows must be positive, got {rows}")
    run_config = run_config or {}
    holdout = run_config.get("holdout") or {}
    indices = holdout.get("chunks") if isinstance(holdout, Mapping) else None
    if indices and same_store(run_config, store):
        parts = _take(chunks_by_index(store, [int(i) for i in indices]), rows)
        selection = "holdout"
    else:
        parts = _take(store.committed_chunks(), DEFAULT_EVAL_ROWS if rows is None else rows)
        selection = "first_rows"
    if not parts:
        raise BadInputError(f"store {store.url} has no committed rows to evaluate on; finish `featureforge cache` first")
    return EvalRows(store, parts, selection)


def auto_batch_size(d_in: int, d_dict: int, requested: int = 0) -> int:
    """``requested`` if positive, else rows such that one batch of codes is about 16M floats."""
    if requested and requested > 0:
        return int(requested)
    return int(min(8192, max(256, 2**24 // max(d_in, d_dict, 1))))
