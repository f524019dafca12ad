"""The comparison's figures: the distribution of best-match scores, and shared fraction against firing frequency."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..plots import new_figure, save_figure


def plot_best_scores(path: Path, a: str, b: str, matches: Mapping[str, Any], thresholds: Sequence[float]) -> Path:
    """Histogram of each A-latent's best-match score (and its Hungarian partner's) per similarity."""
    fig = new_figure(4.0 * len(matches), 3.4)
    axes = fig.subplots(1, len(matches), squeeze=False)[0]
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, (kind, m) in zip(axes, matches.items()):
        ax.hist(np.clip(m.best_score, -0.2, 1.0), bins=bins, alpha=0.6, label="best")
        ok = np.isfinite(m.matched_score)
        ax.hist(np.clip(m.matched_score[ok], -0.2, 1.0), bins=bins, alpha=0.6, label="Hungarian")
        for t in thresholds:
            ax.axvline(t, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{kind}: {a} → {b}", fontsize=9)
        ax.set_xlabel("cosine" if kind != "activation" else "Pearson correlation")
        ax.set_ylabel("latents of A")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_shared_vs_frequency(path: Path, a: str, b: str, frequency: np.ndarray, shared_activation: np.ndarray,
                             shared_directions: np.ndarray | None, threshold: float, bins: int = 12) -> Path:
    """Fraction of A's latents shared with B, in bins of log10 firing frequency (dead latents left out)."""
    fig = new_figure(5.2, 3.6)
    ax = fig.subplots()
    live = frequency > 0
    logf = np.log10(frequency[live]) if live.any() else np.zeros(0)
    if len(logf):
        edges = np.linspace(logf.min(), max(logf.max(), logf.min() + 1e-6), bins + 1)
        which = np.clip(np.digitize(logf, edges) - 1, 0, bins - 1)
        centres = (edges[:-1] + edges[1:]) / 2
        series = [("activation Hungarian ρ", shared_activation)]
        if shared_directions is not None:
            series.append(("encoder + decoder (Paulo & Belrose)", shared_directions))
        for label, shared in series:
            s = shared[live]
            frac = [s[which == k].mean() if (which == k).any() else np.nan for k in range(bins)]
            ax.plot(centres, frac, marker="o", label=label)
        counts = np.bincount(which, minlength=bins)
        twin = ax.twinx()
        twin.bar(centres, counts, width=(edges[1] - edges[0]) * 0.8, alpha=0.15, color="grey")
        twin.set_ylabel("latents", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("log10 firing frequency of A's latent")
    ax.set_ylabel(f"shared fraction (> {threshold})")
    ax.set_title(f"{a} vs {b}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)
