"""A streaming source of fixed-length sequences for the write-shuffle tests (imported, not collected).

Row ``i`` of the stream belongs to sequence ``i // seq_len``; ``acts`` hold the row index, so a
store's rows name where they came from. ``sites=2`` or ``3`` adds sites ``second`` (-index) and
``third`` (2 * index), so a store of several sites shows that every site's rows moved together. With ``FF_TEST_EXIT_AFTER=N`` in the environment the
process ends abruptly (``os._exit``, no cleanup) after handing over N batches: a kill mid-cache.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np

import featureforge as ff


@dataclasses.dataclass
class SequenceOptions:
    rows: int = 4096
    seq_len: int = 64
    batch_rows: int = 100
    sites: int = 1
    """Sites per row: the second holds -index, the third 2 * index (each `width` wide)."""
    width: int = 2
    """Width of each site after the first."""


class Sequences(ff.ActivationSource):
    name = "test-sequences"
    Options = SequenceOptions

    @property
    def d_in(self) -> int:
        return 4

    @property
    def sites(self) -> list[ff.Site]:
        more = [ff.Site(name, self.options.width) for name in ("second", "third")[: self.options.sites - 1]]
        return [ff.Site("acts", 4)] + more

    @property
    def n_rows(self) -> int:
        return self.options.rows

    @property
    def columns(self) -> dict[str, str]:
        return {"seq_ids": "int64", "positions": "int32"}

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        o = self.options
        exit_after = int(os.environ.get("FF_TEST_EXIT_AFTER", "0"))
        mine = np.arange(rank, o.rows, world_size)  # this writer's shard: every world_size-th row
        for n, start in enumerate(range(skip_rows, len(mine), o.batch_rows)):
            if exit_after and n == exit_after:
                os._exit(3)
            idx = mine[start : start + o.batch_rows]
            batch = {
                "acts": np.repeat(idx[:, None].astype(np.float32), 4, axis=1),
                "seq_ids": idx // o.seq_len,
                "positions": (idx % o.seq_len).astype(np.int32),
            }
            for name, factor in (("second", -1.0), ("third", 2.0))[: o.sites - 1]:
                batch[name] = np.repeat(factor * idx[:, None].astype(np.float32), o.width, axis=1)
            yield batch
