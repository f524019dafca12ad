"""Which committed chunks train a dictionary and which are held out for evaluation.

The held-out set is the committed chunks with the highest indices, enough to cover
``holdout_rows``; training never reads them and ``config.json`` records them, so evaluation on a
run's own store uses rows the dictionary has not seen.
"""

from __future__ import annotations

from typing import Sequence

from .errors import BadInputError
from .store import ActivationStore, ChunkRef

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
