"""Training plots: ``plots/training.png`` drawn from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from .run import METRICS_FILE, PLOTS_DIR, TRAINING_PLOT


def plot_training(run_dir: Path) -> Path | None:
    """plots/training.png: loss, FVU, L0 and dead fraction against rows seen."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    keys = [k for k in ("loss", "fvu", "l0", "dead_fraction") if any(k in line for line in lines)]
    # Evaluation during training: each evaluator's score (or FVU) on its own panel.
    keys += sorted({k for line in lines for k in line if "/" in k and k.rsplit("/", 1)[1] in ("score", "fvu")})
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    axes = [axes] if len(keys) == 1 else list(axes)
    for ax, key in zip(axes, keys):
        points = [(line["rows"], line[key]) for line in lines if line.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if "/" in key else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("rows")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(4))
        if key in ("loss", "fvu") and points and all(p[1] > 0 for p in points):
            ax.set_yscale("log")
    fig.tight_layout()
    out = run_dir / PLOTS_DIR / TRAINING_PLOT
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
