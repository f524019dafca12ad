"""The hold-out split and the eval rows: one concept seen from training and from evaluation.

Training holds out the committed chunks with the highest indices, enough to cover
``holdout_rows``, and never reads them; ``config.json`` records them. Evaluation then reads the
run's held-out chunks when it is given the run's own store (rows the dictionary has not seen),
else the store's first committed rows; either way in storage order, in bounded batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BadInputError, OptionError
from ._view import ActivationStore, ChunkRef

__all__ = [
    "DEFAULT_EVAL_ROWS",
    "EvalRows",
    "auto_batch_size",
    "chunks_by_index",
    "default_holdout_rows",
    "same_store",
    "select_eval_rows",
    "split_chunks",
]

DEFAULT_HOLDOUT_FRACTION = 0.05
DEFAULT_HOLDOUT_MAX_ROWS = 65536


def default_holdout_rows(total_rows: int) -> int:
    return min(DEFAULT_HOLDOUT_MAX_ROWS, max(1, int(total_rows * DEFAULT_HOLDOUT_FRACTION)))


def split_chunks(store: ActivationStore, holdout_rows: int | None = None) -> tuple[list[ChunkRef], list[ChunkRef]]:
    """(training chunks, held-out chunks); ``holdout_rows=0`` holds nothing out."""
    chunks = store.committed_chunks()
    total = sum(c.rows for c in chunks)
    want = default_holdout_rows(total) if holdout_rows is None else int(holdout_rows)
    if want <= 0:
        return chunks, []
    held: list[ChunkRef] = []
    got = 0
    for ref in reversed(chunks):
        if got >= want:
            break
        held.append(ref)
        got += ref.rows
    train = [c for c in chunks if c not in held]
    if not train:
        raise BadInputError(
            f"store {store.url} has {len(chunks)} committed chunk(s), all needed for {want} held-out rows; "
            "cache more rows, use a smaller --rows-per-chunk, or lower the held-out rows"
        )
    return train, sorted(held, key=lambda c: c.index)


def chunks_by_index(store: ActivationStore, indices: Sequence[int]) -> list[ChunkRef]:
    """ChunkRefs of the given committed chunk indices (as recorded in a run's config)."""
    committed = {c.index: c for c in store.committed_chunks()}
    missing = [i for i in indices if i not in committed]
    if missing:
        raise BadInputError(f"store {store.url} lacks committed chunk(s) {missing[:5]} that the run held out; evaluate against the store it was trained on")
    return [committed[i] for i in indices]

#: Rows evaluated when the run has no held-out chunks on the given store.
DEFAULT_EVAL_ROWS = 65536


@dataclass
class EvalRows:
    """The eval rows: parts of committed chunks, read in storage order in bounded batches."""

    store: ActivationStore
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


def _take(chunks: Sequence[ChunkRef], limit: int | None) -> list[tuple[int, int]]:
    parts: list[tuple[int, int]] = []
    left = math.inf if limit is None else int(limit)
    for ref in chunks:
        if left <= 0:
            break
        n = int(min(ref.rows, left))
        parts.append((ref.index, n))
        left -= n
    return parts


def run_store(store: ActivationStore, run_config: Any) -> ActivationStore:
    """The view of ``store`` a run's ``acts`` come from: its ``acts`` site, else its first stacked
    site (config.json's ``sites``); the store itself for a run on a one-site store."""
    roles = (run_config.get("sites") if isinstance(run_config, Mapping) else getattr(run_config, "sites", None)) or {}
    site = roles.get("acts") or (list(roles.get("sites") or []) or [None])[0]
    return store.site(site) if site else store


def same_store(run_config: Mapping[str, Any], store: ActivationStore) -> bool:
    """Whether ``store`` is the one the run was trained on (the rule is :func:`featureforge.run.store_matches`)."""
    from ..run import store_matches

    return store_matches(run_config.get("store"), store)


def select_eval_rows(store: ActivationStore, run_config: Mapping[str, Any] | None = None, rows: int | None = None) -> EvalRows:
    """The run's held-out chunks if ``store`` is its store, else the first ``rows`` committed rows.

    ``rows`` (default ``DEFAULT_EVAL_ROWS``) also caps the held-out rows when given.
    """
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
