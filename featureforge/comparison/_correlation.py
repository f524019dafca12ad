"""Pearson correlations between two dictionaries' codes, streamed over the eval rows in bounded memory.

``Moments`` holds one dictionary's per-latent sums over the rows and its firing counts (code > 0).
Dense codes (neurons: more than half the entries of the first batch non-zero) are centred on the
first batch's mean, so large offsets such as GELU neurons' do not cancel away the variance; sparse
codes (SAE latents) are left uncentred, their means being small next to their spread, so they stay
sparse. ``CrossBlock`` holds Σ aᵢ bⱼ for a block of A's latents against all of B's: float32
products per batch, accumulated in float64, so memory is the block's size whatever the row count;
a block of sparse codes (at most ``SPARSE_DENSITY`` non-zero) is multiplied as a sparse matrix, so
the cost follows the non-zeros rather than m_a·m_b. With both, ρᵢⱼ = (Σab/n − āb̄) / (σₐσ_b), 0
where a latent is constant.

Gurnee et al. 2024 ("Universal Neurons in GPT2 Language Models") judge a correlation against a
baseline: the same maximum taken over a random rotation of the other model's units (an
orthogonal mix keeps the activation space and destroys the basis). ``random_rotation`` gives that
orthogonal matrix, seeded.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CrossBlock", "Moments", "random_rotation"]

#: Codes with more non-zero entries than this fraction (first batch) are centred.
CENTRE_DENSITY = 0.5
#: A block of codes with at most this fraction non-zero is multiplied as a sparse matrix.
SPARSE_DENSITY = 0.05


class Moments:
    """Per-latent Σz, Σz² (shifted by the first batch's mean) and firing counts of one dictionary."""

    def __init__(self, m: int):
        self.m = m
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.centred: bool | None = None  # decided on the first batch
        self.sum = torch.zeros(m, dtype=torch.float64)
        self.sum2 = torch.zeros(m, dtype=torch.float64)
        self.fires = torch.zeros(m, dtype=torch.float64)

    def centre(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` minus the shift: the first batch's mean for dense codes, none for sparse ones."""
        codes = codes.float()
        if self.centred is None:
            dense = float((codes != 0).float().mean()) > CENTRE_DENSITY
            self.shift = codes.mean(dim=0) if dense else None
            self.centred = dense
        return codes - self.shift if self.centred else codes

    def update(self, codes: torch.Tensor, centred: torch.Tensor) -> None:
        self.n += codes.shape[0]
        self.sum += centred.sum(dim=0).double()
        self.sum2 += (centred * centred).sum(dim=0).double()
        self.fires += (codes > 0).float().sum(dim=0).double()

    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)

    def std(self) -> torch.Tensor:
        """Standard deviation, 0 where the latent is constant up to float32 rounding."""
        n = max(self.n, 1)
        mean_sq = self.sum2 / n
        var = (mean_sq - self.mean() ** 2).clamp_min(0)
        return torch.where(var > 1e-10 * mean_sq.clamp_min(1e-30), var.sqrt(), torch.zeros_like(var))

    def frequency(self) -> np.ndarray:
        """Fraction of rows on which each latent fires."""
        return (self.fires / max(self.n, 1)).numpy()


class CrossBlock:
    """Σ a[:, lo:hi]ᵀ b over rows (centred codes), float64 [hi − lo, m_b]."""

    def __init__(self, lo: int, hi: int, m_b: int):
        self.lo, self.hi = lo, hi
        self.cross = torch.zeros(hi - lo, m_b, dtype=torch.float64)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        part = a[:, self.lo : self.hi]
        nonzero = int(torch.count_nonzero(part))
        if nonzero <= SPARSE_DENSITY * part.numel():
            self.cross += torch.sparse.mm(part.T.contiguous().to_sparse(), b).double()
        else:
            self.cross += (part.T @ b).double()

    def correlation(self, ma: Moments, mb: Moments, mean_b: torch.Tensor | None = None, std_b: torch.Tensor | None = None) -> np.ndarray:
        """ρ [hi − lo, m_b]; ``mean_b``/``std_b`` replace B's moments (a rotated B has its own)."""
        n = max(ma.n, 1)
        mean_a, std_a = ma.mean()[self.lo : self.hi], ma.std()[self.lo : self.hi]
        mean_b = mb.mean() if mean_b is None else mean_b
        std_b = mb.std() if std_b is None else std_b
        cov = self.cross / n - mean_a[:, None] * mean_b[None, :]
        denom = std_a[:, None] * std_b[None, :]
        rho = torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov)).clamp(-1, 1)
        return rho.numpy()


def random_rotation(m: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal [m, m] matrix (QR of a Gaussian with the signs of R's diagonal fixed)."""
    gen = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None, :]).float()
