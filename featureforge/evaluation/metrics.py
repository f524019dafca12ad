"""The agreed evaluation metrics, as pure functions on whole tensors (public: plugins use them).

With ``x`` the eval rows [n, d], ``x̂`` their reconstruction, ``z`` the dictionary's codes [n, m]
(a latent is *active* on a row when its code is non-zero), ``W`` the decoder rows [m, d], ``F`` the
true feature directions [k, d] and ``c`` the true codes [n, k] of a synthetic store:

- **FVU** (fraction of variance unexplained) = Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the per-dimension mean
  over the eval rows; 0 is a perfect reconstruction, 1 is no better than predicting x̄.
- **explained variance** = 1 − FVU.  **MSE** = Σ‖x − x̂‖² / (n·d), per element.
- **L0** = mean over rows of the number of active latents.
- **dead** latents are never active over the eval rows; **dense** latents are active on more than
  ``dense_threshold`` (default 10%) of them. The **density histogram** bins log10 of each live
  latent's firing frequency (active rows / n); dead latents (log10 0 = −∞) are counted apart.
- **MMCS** (mean max cosine similarity) = mean over true features i of max_j cos(F_i, W_j).
- **MCC** (mean correlation coefficient): Pearson correlations ρ_ij between true code c_i and
  learned code z_j over the eval rows; true features and latents are matched one to one by the
  Hungarian algorithm maximising Σ|ρ| (the matching is on *code correlations*, not on decoder
  directions); MCC = mean over true features of |ρ| with its match. A feature left unmatched
  (m < k) counts 0; one that never fires on the eval rows has no correlation and is left out of
  the mean (``true_features_active`` counts those kept).
- **recovered@τ** = fraction of true features whose *matched* decoder row has cos > τ (default
  0.9); ``recovered_best`` uses the best decoder row instead of the matched one.
- **F1** per true feature after matching: firing of c_i (> 0) against firing of its matched latent
  (≠ 0): F1 = 2·TP / (#rows c_i fires + #rows z_j fires); its mean and quantiles are reported.

The streaming versions the built-in evaluators use (bounded memory) are in ``featureforge.evaluation._accumulators``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_DENSE_THRESHOLD",
    "DENSITY_BINS",
    "cosine_matrix",
    "dead_latents",
    "dense_latents",
    "density_histogram",
    "explained_variance",
    "firing_counts",
    "firing_f1",
    "fvu",
    "hungarian_match",
    "l0",
    "matched_per_row",
    "mcc",
    "mmcs",
    "mse",
    "pearson_matrix",
    "quantiles",
    "recovered_fraction",
]

#: A latent active on more than this fraction of the eval rows counts as dense.
DEFAULT_DENSE_THRESHOLD = 0.1
#: Bins of the log10 firing-frequency histogram.
DENSITY_BINS = 50


def _f64(t: Any) -> torch.Tensor:
    return torch.as_tensor(t).detach().to(torch.float64)


def fvu(x: Any, x_hat: Any) -> float:
    """Σ‖x − x̂‖² / Σ‖x − x̄‖² over rows, x̄ the per-dimension mean (nan when x is constant)."""
    x, x_hat = _f64(x), _f64(x_hat)
    sse = ((x - x_hat) ** 2).sum()
    sst = ((x - x.mean(dim=0, keepdim=True)) ** 2).sum()
    return float(sse / sst) if sst > 0 else math.nan


def explained_variance(x: Any, x_hat: Any) -> float:
    """1 − FVU."""
    return 1.0 - fvu(x, x_hat)


def mse(x: Any, x_hat: Any) -> float:
    """Mean squared error per element: Σ‖x − x̂‖² / (n·d)."""
    x, x_hat = _f64(x), _f64(x_hat)
    return float(((x - x_hat) ** 2).mean())


def firing_counts(codes: Any) -> torch.Tensor:
    """Int64 [m]: rows on which each latent is active (code ≠ 0)."""
    return (torch.as_tensor(codes) != 0).sum(dim=0).to(torch.int64)


def l0(codes: Any) -> float:
    """Mean number of active latents (code ≠ 0) per row."""
    codes = torch.as_tensor(codes)
    return float((codes != 0).sum(dim=-1).to(torch.float64).mean())


def dead_latents(counts: Any) -> torch.Tensor:
    """Bool [m]: latents never active (firing count 0)."""
    return torch.as_tensor(counts) == 0


def dense_latents(counts: Any, n_rows: int, threshold: float = DEFAULT_DENSE_THRESHOLD) -> torch.Tensor:
    """Bool [m]: latents active on more than ``threshold`` of ``n_rows`` rows."""
    return torch.as_tensor(counts).to(torch.float64) / max(int(n_rows), 1) > threshold


def density_histogram(counts: Any, n_rows: int, bins: int = DENSITY_BINS) -> dict[str, Any]:
    """Histogram of log10(firing frequency) of live latents, over [log10(1/n), 0].

    Returns ``{"bin_edges": [bins+1], "counts": [bins], "dead": int}``; dead latents are not binned.
    """
    counts = torch.as_tensor(counts).to(torch.float64).cpu().numpy()
    n_rows = max(int(n_rows), 1)
    live = counts[counts > 0]
    low = math.log10(1.0 / n_rows) if n_rows > 1 else -1.0
    edges = np.linspace(low, 0.0, bins + 1)
    hist, _ = np.histogram(np.log10(live / n_rows), bins=edges)
    return {"bin_edges": edges.tolist(), "counts": hist.astype(int).tolist(), "dead": int((counts == 0).sum())}


def cosine_matrix(a: Any, b: Any) -> torch.Tensor:
    """[k, m] cosines between rows of ``a`` [k, d] and rows of ``b`` [m, d] (0 for a zero row)."""
    a, b = _f64(a), _f64(b)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def mmcs(true_features: Any, decoder: Any) -> float:
    """Mean over true features of the best cosine with any decoder row."""
    return float(cosine_matrix(true_features, decoder).max(dim=1).values.mean())


def pearson_matrix(a: Any, b: Any) -> torch.Tensor:
    """[k, m] Pearson correlations between columns of ``a`` [n, k] and ``b`` [n, m] (0 if constant)."""
    a, b = _f64(a), _f64(b)
    a = a - a.mean(dim=0)
    b = b - b.mean(dim=0)
    denom = a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :]
    cov = a.T @ b
    return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))


def hungarian_match(score: Any) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the one-to-one matching maximising Σ score (scipy's linear_sum_assignment).

    ``score`` is [k, m]; min(k, m) pairs are matched, rows in increasing order.
    """
    from scipy.optimize import linear_sum_assignment

    score = torch.as_tensor(score).detach().to(torch.float64).cpu().numpy()
    rows, cols = linear_sum_assignment(score, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def matched_per_row(k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Int64 [k]: the column matched to each row, −1 where none."""
    match = np.full(k, -1, dtype=np.int64)
    match[rows] = cols
    return match


def mcc(true_codes: Any, learned_codes: Any) -> tuple[float, np.ndarray]:
    """(MCC, match): mean |Pearson ρ| of Hungarian-matched (true feature, latent) code pairs.

    Matching maximises Σ|ρ| over code correlations. ``match[i]`` is the latent matched to true
    feature i (−1 if unmatched, counted as 0). True features that never fire are left out.
    """
    true_codes = torch.as_tensor(true_codes)
    corr = pearson_matrix(true_codes, learned_codes).abs()
    rows, cols = hungarian_match(corr)
    match = matched_per_row(corr.shape[0], rows, cols)
    present = (true_codes != 0).any(dim=0).cpu().numpy()
    values = np.array([float(corr[i, j]) if j >= 0 else 0.0 for i, j in enumerate(match)])
    return (float(values[present].mean()) if present.any() else math.nan), match


def recovered_fraction(true_features: Any, decoder: Any, match: np.ndarray | None = None, threshold: float = 0.9) -> float:
    """Fraction of true features whose matched decoder row (best row if ``match`` is None) has cos > threshold."""
    cos = cosine_matrix(true_features, decoder)
    if match is None:
        best = cos.max(dim=1).values
    else:
        match = np.asarray(match)
        best = torch.tensor([float(cos[i, j]) if j >= 0 else -1.0 for i, j in enumerate(match)], dtype=torch.float64)
    return float((best > threshold).to(torch.float64).mean())


def firing_f1(true_active: Any, learned_active: Any) -> float:
    """F1 of one latent's firing (bool [n]) against one true feature's (nan if neither ever fires)."""
    t = torch.as_tensor(true_active).bool()
    p = torch.as_tensor(learned_active).bool()
    tp = float((t & p).sum())
    denom = float(t.sum() + p.sum())
    return 2 * tp / denom if denom > 0 else math.nan


def quantiles(values: Any, qs: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float | None]:
    """p10, p25, p50, p75, p90 of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return {f"p{round(q * 100)}": (float(np.quantile(v, q)) if v.size else None) for q in qs}
