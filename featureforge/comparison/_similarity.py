"""The similarities of every pair of runs: direction cosines in row blocks, code correlations in passes over the rows."""

from __future__ import annotations

from typing import Any

from ..store import auto_batch_size
from ._match import BlockMatcher, cosine_blocks
from ._rows import AlignedRows
from ._runs import _Pair, _Run


def _direction_matches(a: _Run, b: _Run, pair: _Pair, memory: int, dense_limit: int) -> None:
    kinds = {"decoder": (a.dictionary.decoder_directions, b.dictionary.decoder_directions)}
    enc_a, enc_b = a.dictionary.encoder_directions, b.dictionary.encoder_directions
    if enc_a is not None and enc_b is not None:
        kinds["encoder"] = (enc_a, enc_b)
    for kind, (wa, wb) in kinds.items():
        matcher = BlockMatcher(a.m, b.m, dense_limit=dense_limit)
        for lo, block in cosine_blocks(wa, wb, memory):
            matcher.add(lo, block)
        pair.matches[kind] = matcher.result()


def _tasks(runs: list[_Run], pairs: list[_Pair], baseline: bool, memory: int) -> list[list[tuple[Any, ...]]]:
    """Accumulator blocks, packed into passes of at most ``memory`` entries each.

    A task is (pair, kind, lo, hi): rows lo:hi of A's latents (``ab``: against B; ``a_rotb``:
    against rotated B) or of rotated A's units (``rota_b``: against B).
    """
    tasks = []
    for p in pairs:
        ma, mb = runs[p.i].m, runs[p.j].m
        step = max(1, memory // max(mb, 1))
        for kind in ("ab", "a_rotb", "rota_b") if baseline else ("ab",):
            tasks.extend((p, kind, lo, min(ma, lo + step)) for lo in range(0, ma, step))
    passes: list[list[tuple[Any, ...]]] = [[]]
    used = 0
    for t in tasks:
        size = (t[3] - t[2]) * runs[t[0].j].m
        if passes[-1] and used + size > memory:
            passes.append([])
            used = 0
        passes[-1].append(t)
        used += size
    return passes


def _activation_matches(runs: list[_Run], aligned: AlignedRows, which: list[int], pairs: list[_Pair], baseline: bool,
                        memory: int, dense_limit: int, batch_size: int, seed: int, progress: bool) -> None:
    import torch

    from ..progress import progress_bar
    from ._correlation import CrossBlock, Moments, random_rotation

    for k, r in enumerate(runs):
        r.moments = Moments(r.m)
        if baseline:
            r.rotated = Moments(r.m)
            r.rotation = random_rotation(r.m, seed * 1000 + k)
    passes = _tasks(runs, pairs, baseline, memory)
    batch = auto_batch_size(max(r.dictionary.d_in for r in runs), max(r.m for r in runs), batch_size)
    matchers: dict[tuple[int, str], BlockMatcher] = {}
    for p in pairs:
        ma, mb = runs[p.i].m, runs[p.j].m
        matchers[(id(p), "ab")] = BlockMatcher(ma, mb, dense_limit=dense_limit)
        if baseline:
            matchers[(id(p), "a_rotb")] = BlockMatcher(ma, mb, dense_limit=0, candidates=1)
            matchers[(id(p), "rota_b")] = BlockMatcher(ma, mb, dense_limit=0, candidates=1)
    total = aligned.rows.rows * len(passes)
    with progress_bar(total, "compare", enabled=None if progress else False) as bar:
        for number, tasks in enumerate(passes):
            blocks = [CrossBlock(lo, hi, runs[p.j].m) for p, _, lo, hi in tasks]
            for acts in aligned.blocks(batch):
                centred, rotated = [], []
                for k, r in enumerate(runs):
                    x = torch.from_numpy(acts[which[k]]).float()
                    codes = r.dictionary.encode(x).float()
                    c = r.moments.centre(codes)
                    rc = c @ r.rotation if baseline else None
                    if number == 0:
                        r.moments.update(codes, c)
                        if baseline:
                            r.rotated.update(rc, rc)
                    centred.append(c)
                    rotated.append(rc)
                for (p, kind, _, _), blk in zip(tasks, blocks):
                    a = rotated[p.i] if kind == "rota_b" else centred[p.i]
                    b = rotated[p.j] if kind == "a_rotb" else centred[p.j]
                    blk.update(a, b)
                bar.update(len(acts[0]))
            for (p, kind, lo, _), blk in zip(tasks, blocks):
                a, b = runs[p.i], runs[p.j]
                ma = a.rotated if kind == "rota_b" else a.moments
                mb = b.rotated if kind == "a_rotb" else b.moments
                matchers[(id(p), kind)].add(lo, blk.correlation(ma, mb))
    for p in pairs:
        p.matches["activation"] = matchers[(id(p), "ab")].result()
        if baseline:
            p.base_a = matchers[(id(p), "a_rotb")].result().best_score
            p.base_b = matchers[(id(p), "rota_b")].result().best_b_score
