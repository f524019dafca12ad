"""Streaming versions of the metrics (``metrics``) for the built-in evaluators.

They read the eval rows batch by batch, so memory is bounded whatever the row count:
reconstruction statistics keep per-dimension sums, ground-truth statistics two [k, m] float64
matrices (correlation cross-term and co-firing counts) plus one batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .metrics import DEFAULT_DENSE_THRESHOLD, DENSITY_BINS, dead_latents, dense_latents, density_histogram, hungarian_match, matched_per_row

__all__ = ["CodeMatchStats", "ReconstructionStats"]


class ReconstructionStats:
    """Accumulates FVU, MSE, L0 and firing counts over batches; ``result()`` gives the metrics.

    Row sums are float64 and centred on the first batch's mean, so large activation offsets do
    not cancel away the variance. Firing counts are summed per batch in float32 (exact integers
    for batches under 2^24 rows) and accumulated in float64.
    """

    def __init__(self, d_in: int, d_dict: int, device: Any = "cpu"):
        kw = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.d_in = d_in
        self.shift: torch.Tensor | None = None
        self.sum_x = torch.zeros(d_in, **kw)
        self.sum_x2 = torch.zeros(d_in, **kw)
        self.sse = torch.zeros((), **kw)
        self.counts = torch.zeros(d_dict, **kw)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor) -> None:
        x = x.to(torch.float64)
        if self.shift is None:
            self.shift = x.mean(dim=0)
        xc = x - self.shift
        self.n += x.shape[0]
        self.sum_x += xc.sum(dim=0)
        self.sum_x2 += (xc * xc).sum(dim=0)
        self.sse += ((x - x_hat.to(torch.float64)) ** 2).sum()
        self.counts += (codes != 0).to(torch.float32).sum(dim=0).to(torch.float64)

    def total_variance(self) -> float:
        """Σ‖x − x̄‖² over the rows seen: FVU's denominator."""
        n = max(self.n, 1)
        return float((self.sum_x2 - self.sum_x**2 / n).sum())

    def result(self, dense_threshold: float = DEFAULT_DENSE_THRESHOLD, bins: int = DENSITY_BINS) -> dict[str, Any]:
        n = max(self.n, 1)
        sst = self.total_variance()
        sse = float(self.sse)
        value = sse / sst if sst > 0 else math.nan
        counts = self.counts.round().to(torch.int64).cpu()
        dead = dead_latents(counts)
        dense = dense_latents(counts, n, dense_threshold)
        m = counts.numel()
        return {
            "rows": self.n,
            "fvu": value,
            "explained_variance": 1.0 - value,
            "mse": sse / (n * self.d_in),
            "l0": float(counts.sum()) / n,
            "d_dict": m,
            "dead": int(dead.sum()),
            "dead_fraction": float(dead.sum()) / m,
            "dense": int(dense.sum()),
            "dense_fraction": float(dense.sum()) / m,
            "dense_threshold": dense_threshold,
            "density_histogram": density_histogram(counts, n, bins),
        }


class CodeMatchStats:
    """Accumulates the statistics MCC and F1 need between true codes [n, k] and learned codes [n, m].

    Keeps Σc, Σc², Σz, Σz², the cross-term Σ cᵀz and the co-firing counts Σ [c≠0]ᵀ[z≠0]: each
    batch's sums and matrix products are float32, accumulated in float64, so memory is O(k·m)
    whatever the number of rows. Codes are not centred before the products: sparse codes have
    means small next to their spread, so cov = Σcz − ΣcΣz/n loses no precision that matters.
    """

    def __init__(self, k: int, m: int, device: Any = "cpu"):
        kw = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.sum_t, self.sum_t2 = torch.zeros(k, **kw), torch.zeros(k, **kw)
        self.sum_l, self.sum_l2 = torch.zeros(m, **kw), torch.zeros(m, **kw)
        self.cross = torch.zeros(k, m, **kw)
        self.cofire = torch.zeros(k, m, **kw)
        self.fire_t, self.fire_l = torch.zeros(k, **kw), torch.zeros(m, **kw)

    @torch.no_grad()
    def update(self, true_codes: torch.Tensor, learned_codes: torch.Tensor) -> None:
        t = true_codes.to(torch.float32)
        z = learned_codes.to(torch.float32)
        ta, za = (t != 0).to(torch.float32), (z != 0).to(torch.float32)
        self.n += t.shape[0]
        self.sum_t += t.sum(dim=0).double()
        self.sum_t2 += (t * t).sum(dim=0).double()
        self.sum_l += z.sum(dim=0).double()
        self.sum_l2 += (z * z).sum(dim=0).double()
        self.cross += (t.T @ z).double()
        self.cofire += (ta.T @ za).double()
        self.fire_t += ta.sum(dim=0).double()
        self.fire_l += za.sum(dim=0).double()

    def correlation(self) -> torch.Tensor:
        """[k, m] Pearson correlations of true and learned codes (0 where either is constant)."""
        n = max(self.n, 1)
        cov = self.cross - self.sum_t[:, None] * self.sum_l[None, :] / n
        var_t = (self.sum_t2 - self.sum_t**2 / n).clamp_min(0)
        var_l = (self.sum_l2 - self.sum_l**2 / n).clamp_min(0)
        # A column constant up to float32 rounding (variance < 1e-5 of its mean square) counts as constant.
        ok_t = var_t > 1e-5 * self.sum_t2.clamp_min(1e-300)
        ok_l = var_l > 1e-5 * self.sum_l2.clamp_min(1e-300)
        denom = (var_t[:, None] * var_l[None, :]).sqrt()
        ok = ok_t[:, None] & ok_l[None, :]
        return torch.where(ok, cov / denom.clamp_min(1e-300), torch.zeros_like(cov)).clamp(-1, 1)

    def match(self) -> tuple[np.ndarray, torch.Tensor]:
        """(match [k], |ρ| [k, m]): Hungarian matching of true features to latents on |ρ|."""
        corr = self.correlation().abs()
        rows, cols = hungarian_match(corr)
        return matched_per_row(corr.shape[0], rows, cols), corr

    def f1(self, match: np.ndarray) -> np.ndarray:
        """Float64 [k]: F1 of each true feature's firing vs its matched latent's (nan if undefined)."""
        out = np.full(len(match), math.nan)
        fire_t = self.fire_t.cpu().numpy()
        fire_l = self.fire_l.cpu().numpy()
        for i, j in enumerate(match):
            if fire_t[i] == 0:
                continue  # absent from the eval rows: F1 undefined
            if j < 0:
                out[i] = 0.0
                continue
            out[i] = 2 * float(self.cofire[i, j]) / (fire_t[i] + fire_l[j])
        return out
