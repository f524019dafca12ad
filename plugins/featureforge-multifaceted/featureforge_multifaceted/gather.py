"""Read scattered rows of a store in storage order: one covering read per chunk, not one per row.

Single-row reads through zarr cost about a millisecond each; the rows a dashboard needs (top rows
of every latent and the tokens around them) are scattered, so they are sorted, grouped by chunk
and each chunk is read once over the span its wanted rows cover.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def read_rows(store: Any, rows: Iterable[int], columns: Iterable[str] = ("acts",)) -> dict[str, np.ndarray]:
    """``{column: values}`` of ``rows`` (global row indices, any order, repeats allowed), in that order."""
    rows = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64)
    columns = list(columns)
    uniq, back = np.unique(rows, return_inverse=True)
    out: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    if uniq.size:
        rpc = store.rows_per_chunk
        chunk = uniq // rpc
        bounds = np.flatnonzero(np.diff(chunk)) + 1
        for group in np.split(uniq, bounds):
            lo, hi = int(group[0]), int(group[-1]) + 1
            for c in columns:
                out[c].append(store.read(lo, hi, c)[group - lo])
    result = {}
    for c in columns:
        if out[c]:
            result[c] = np.concatenate(out[c])[back]
        else:
            width = (store.d_in,) if c in ("acts", "grads") else ()
            result[c] = np.zeros((0, *width), dtype=np.float32)
    return result
