"""Token contexts on a store written with the write-side shuffle: rows of a sequence are not contiguous there."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import torch

import featureforge as ff
from featureforge_multifaceted.contexts import contexts

SEQ = 32  # tokens per sequence; token id = 1000 * sequence + position


@dataclasses.dataclass
class _Opts:
    rows: int = 2048


class TokenSequences(ff.ActivationSource):
    name = "test-token-sequences"
    Options = _Opts

    @property
    def d_in(self) -> int:
        return 2

    @property
    def n_rows(self) -> int:
        return self.options.rows

    @property
    def columns(self) -> dict[str, str]:
        return {"token_ids": "int32", "seq_ids": "int64", "positions": "int32"}

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        mine = np.arange(rank, self.options.rows, world_size)
        for start in range(skip_rows, len(mine), 100):
            idx = mine[start : start + 100]
            seq, pos = idx // SEQ, idx % SEQ
            yield {"acts": np.stack([idx, pos], 1).astype(np.float32), "token_ids": (1000 * seq + pos).astype(np.int32),
                   "seq_ids": seq, "positions": pos.astype(np.int32)}


class _Identity(torch.nn.Module):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_contexts_follow_the_sequence_not_the_storage_order(tmp_path):
    store = ff.cache(TokenSequences(), store=tmp_path / "s", rows_per_chunk=128, write_shuffle_rows=512, progress=False)
    token = store.read(0, store.rows, "token_ids")
    rows = [int(np.flatnonzero(token == t)[0]) for t in (1000 * 3 + 0, 1000 * 5 + 17, 1000 * 40 + 31)]
    got = contexts(_Identity(), store, [(1, r) for r in rows], decode=lambda ids: [str(i) for i in ids], before=4, after=3)
    for c, (seq, pos) in zip(got, [(3, 0), (5, 17), (40, 31)]):
        want = list(range(max(0, pos - 4), min(SEQ, pos + 4)))
        assert c["token_ids"] == [1000 * seq + p for p in want]  # the sequence's neighbours, in token order
        assert c["activations"] == [float(p) for p in want]  # latent 1 of the identity is the position
        assert c["token_ids"][c["index"]] == 1000 * seq + pos
