"""Matching the latents of two dictionaries from a similarity matrix seen block by block.

A similarity matrix S [m_a, m_b] (decoder cosines, encoder cosines, activation correlations)
arrives in blocks of A's rows, so it never has to exist whole. ``BlockMatcher`` keeps what the
report needs: each latent's best partner on both sides, and for the one-to-one (Hungarian)
matching either the whole matrix (when m_a·m_b ≤ ``dense_limit``, solved exactly by scipy's
``linear_sum_assignment``) or each A-latent's ``candidates`` best partners, solved as a sparse
bipartite matching (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``). The sparse
problem gets, for every i < min(m_a, m_b), the pair (i, i) at its true score as a fall-back edge,
so a full matching always exists; it is exact whenever the optimal partners lie among the
candidates, which is the case that matters (pairs above any sensible threshold are near the top).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DENSE_LIMIT", "BlockMatcher", "Matching", "cosine_blocks"]

#: Largest m_a·m_b matched exactly on the dense matrix (float32: 256 MiB).
DENSE_LIMIT = 1 << 26
#: Partners kept per latent for the sparse matching of larger dictionaries.
CANDIDATES = 32


@dataclass
class Matching:
    """One pair of dictionaries' matches, A's side (B's best partners too)."""

    #: [m_a] best B-latent of each A-latent and its score.
    best: np.ndarray
    best_score: np.ndarray
    #: [m_b] best A-latent of each B-latent and its score.
    best_b: np.ndarray
    best_b_score: np.ndarray
    #: [m_a] Hungarian partner of each A-latent (-1: unmatched, m_a > m_b) and its score (nan).
    matched: np.ndarray
    matched_score: np.ndarray
    #: "dense" (exact) or "sparse" (top candidates per latent).
    method: str
    #: [min(m_a, m_b)] score of latent i with latent i of B: a unit's persistence when A and B are
    #: the same units at two checkpoints.
    same_index: np.ndarray | None = None


class BlockMatcher:
    """Collects S [m_a, m_b] block by block (rows ``lo:lo+r`` of A) in bounded memory; ``result()`` matches."""

    def __init__(self, m_a: int, m_b: int, dense_limit: int = DENSE_LIMIT, candidates: int = CANDIDATES):
        self.m_a, self.m_b = int(m_a), int(m_b)
        self.dense = self.m_a * self.m_b <= dense_limit
        self.matrix = np.zeros((self.m_a, self.m_b), dtype=np.float32) if self.dense else None
        self.k = min(int(candidates), self.m_b)
        self.diag = np.full(min(self.m_a, self.m_b), np.nan, dtype=np.float32)
        if not self.dense:
            self.cand_idx = np.zeros((self.m_a, self.k), dtype=np.int64)
            self.cand_val = np.full((self.m_a, self.k), -np.inf, dtype=np.float32)
        self.best = np.full(self.m_a, -1, dtype=np.int64)
        self.best_score = np.full(self.m_a, -np.inf, dtype=np.float32)
        self.best_b = np.full(self.m_b, -1, dtype=np.int64)
        self.best_b_score = np.full(self.m_b, -np.inf, dtype=np.float32)
        self.seen = np.zeros(self.m_a, dtype=bool)

    def add(self, lo: int, block: np.ndarray) -> None:
        """Record rows ``lo : lo + len(block)`` of S."""
        block = np.asarray(block, dtype=np.float32)
        r = block.shape[0]
        hi = lo + r
        self.seen[lo:hi] = True
        arg = block.argmax(axis=1)
        self.best[lo:hi] = arg
        self.best_score[lo:hi] = block[np.arange(r), arg]
        col_arg = block.argmax(axis=0)
        col_val = block[col_arg, np.arange(self.m_b)]
        better = col_val > self.best_b_score
        self.best_b[better] = col_arg[better] + lo
        self.best_b_score[better] = col_val[better]
        rows = np.arange(lo, min(hi, len(self.diag)))
        if len(rows):
            self.diag[rows] = block[rows - lo, rows]
        if self.dense:
            self.matrix[lo:hi] = block
            return
        top = np.argpartition(-block, self.k - 1, axis=1)[:, : self.k] if self.k < self.m_b else np.tile(np.arange(self.m_b), (r, 1))
        self.cand_idx[lo:hi] = top
        self.cand_val[lo:hi] = np.take_along_axis(block, top, axis=1)

    def result(self) -> Matching:
        if not self.seen.all():
            raise RuntimeError(f"{int((~self.seen).sum())} rows of the similarity matrix were never added")
        matched = np.full(self.m_a, -1, dtype=np.int64)
        matched_score = np.full(self.m_a, np.nan, dtype=np.float32)
        if self.dense:
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(self.matrix, maximize=True)
            matched[rows] = cols
            matched_score[rows] = self.matrix[rows, cols]
        else:
            rows, cols, scores = self._sparse_assignment()
            matched[rows] = cols
            matched_score[rows] = scores
        return Matching(self.best, self.best_score, self.best_b, self.best_b_score, matched, matched_score,
                        "dense" if self.dense else "sparse", self.diag.copy())

    def _sparse_assignment(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import min_weight_full_bipartite_matching

        n = len(self.diag)
        rows = np.concatenate([np.repeat(np.arange(self.m_a), self.k), np.arange(n)])
        cols = np.concatenate([self.cand_idx.ravel(), np.arange(n)])
        score = np.concatenate([self.cand_val.ravel(), self.diag]).astype(np.float64)
        # Maximise Σ score = minimise Σ (2 − score): every cost positive (scores lie in [−1, 1]),
        # so no edge is an explicit zero that the sparse format would drop.
        graph = coo_matrix((2.0 - score, (rows, cols)), shape=(self.m_a, self.m_b)).tocsr()  # duplicates summed: dedupe first
        dedup = coo_matrix((np.ones_like(score), (rows, cols)), shape=(self.m_a, self.m_b)).tocsr()
        graph.data = graph.data / dedup.data
        r, c = min_weight_full_bipartite_matching(graph)
        picked = np.asarray(graph[r, c]).ravel()
        return r, c, (2.0 - picked).astype(np.float32)


def cosine_blocks(a: "np.ndarray", b: "np.ndarray", limit_entries: int = 1 << 24):
    """Yield (lo, cos[lo:hi, :]) of the cosine matrix of rows of ``a`` [m_a, d] and ``b`` [m_b, d],
    each block at most ``limit_entries`` floats (0 for a zero row)."""
    import torch

    a = torch.as_tensor(a).detach().float().cpu()
    b = torch.as_tensor(b).detach().float().cpu()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    step = max(1, int(limit_entries) // max(b.shape[0], 1))
    for lo in range(0, a.shape[0], step):
        yield lo, (a[lo : lo + step] @ b.T).numpy()
