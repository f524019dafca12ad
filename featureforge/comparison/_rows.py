"""Which rows a comparison reads, and the check that several stores hold the same tokens row for row.

Runs on one store are compared on its eval rows (``featureforge.store.select_eval_rows``): the
runs' held-out chunks when they all hold out the same ones, else the store's first rows. Runs on
stores of different models are compared on the same global rows of every store (row r of a store
is row r of its source's stream, written in the same order when the data, tokenizer and write
shuffle window agree); the stores' ``token_ids`` (and ``positions`` where both have them) must
then be equal on every compared row, or the comparison is refused in one line.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BadInputError
from ..store import ActivationStore, EvalRows, same_store, select_eval_rows

__all__ = ["AlignedRows", "aligned_rows"]

#: Columns that must agree row for row between stores of different models.
ALIGN_COLUMNS = ("token_ids", "positions", "doc_ids")


class AlignedRows:
    """The eval rows of the first store, read at the same global rows from each distinct store."""

    def __init__(self, rows: EvalRows, stores: list[ActivationStore]):
        self.rows = rows
        self.stores = stores  # distinct stores, stores[0] is rows.store

    def blocks(self, batch_size: int) -> Iterator[list[np.ndarray]]:
        """Yield, per block of rows, the acts of every distinct store (same rows, same order)."""
        for start, acts in self.rows.blocks(batch_size):
            stop = start + len(acts)
            yield [acts] + [s.read(start, stop) for s in self.stores[1:]]

    def describe(self) -> dict[str, Any]:
        return {**self.rows.describe(), "stores": [s.url for s in self.stores]}


def _holdout_ranges(config: Mapping[str, Any], store: ActivationStore) -> list[tuple[int, int]] | None:
    """Global row ranges of a run's held-out chunks on ``store`` (None: not its store, or none held out)."""
    chunks = (config.get("holdout") or {}).get("chunks")
    if not chunks or not same_store(config, store):
        return None
    rpc = store.rows_per_chunk
    return sorted((int(c) * rpc, int(c) * rpc + store.chunk_rows(int(c))) for c in chunks)


def aligned_rows(stores: Sequence[ActivationStore], configs: Sequence[Mapping[str, Any]], rows: int | None) -> tuple[AlignedRows, list[int]]:
    """(the rows to compare on, for each run the index of its store among the distinct ones).

    ``stores[i]`` is run i's store. The runs' held-out rows are used when every run holds out the
    same global rows of its own store; otherwise the first store's first ``rows`` rows.
    """
    distinct: list[ActivationStore] = []
    which: list[int] = []
    for store in stores:
        for k, known in enumerate(distinct):
            if known.url == store.url:
                which.append(k)
                break
        else:
            distinct.append(store)
            which.append(len(distinct) - 1)
    ranges = [_holdout_ranges(c, s) for c, s in zip(configs, stores)]
    common = ranges[0] is not None and all(r == ranges[0] for r in ranges)
    eval_rows = select_eval_rows(distinct[0], configs[0] if common else None, rows)
    aligned = AlignedRows(eval_rows, distinct)
    if len(distinct) > 1:
        check_alignment(aligned)
    return aligned, which


def _ranges(rows: EvalRows, size: int) -> Iterator[tuple[int, int]]:
    """Global (start, stop) ranges of the eval rows, at most ``size`` rows each (no acts read)."""
    rpc = rows.store.rows_per_chunk
    for chunk, n in rows.parts:
        for start in range(chunk * rpc, chunk * rpc + n, size):
            yield start, min(chunk * rpc + n, start + size)


def check_alignment(aligned: AlignedRows) -> None:
    """Refuse stores whose compared rows are not the same tokens (one line naming the first mismatch)."""
    first = aligned.stores[0]
    last = max(c * first.rows_per_chunk + n for c, n in aligned.rows.parts)
    for other in aligned.stores[1:]:
        if other.rows < last:
            raise BadInputError(f"store {other.url} has {other.rows} rows but the comparison reads rows up to {last} of {first.url}; "
                                "cache both models over the same data with the same --rows")
        shared = [c for c in ALIGN_COLUMNS if c in first.columns and c in other.columns]
        if "token_ids" not in shared:
            lacking = first.url if "token_ids" not in first.columns else other.url
            raise BadInputError(f"store {lacking} records no token ids, so its rows cannot be checked against the other store's; "
                                "compare stores of different models only when both were cached by a token source (hf)")
        for start, stop in _ranges(aligned.rows, 65536):
            for column in shared:
                mine, theirs = first.read(start, stop, column), other.read(start, stop, column)
                bad = np.flatnonzero(mine != theirs)
                if len(bad):
                    row = start + int(bad[0])
                    raise BadInputError(
                        f"stores {first.url} and {other.url} do not hold the same tokens: {column} differ at row {row} "
                        f"({mine[bad[0]]} vs {theirs[bad[0]]}, {len(bad)} of {stop - start} rows in that block); "
                        "cache both models over the same data, tokenizer, --rows and write shuffle window")
