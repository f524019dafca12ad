"""Figures: matplotlib on the Agg canvas, with no display and no global pyplot state, so plotting
is safe in threads, tests and headless servers; images are written atomically.

``new_figure``/``save_figure`` are public (evaluator plugins draw with them); ``plot_training``
draws a run's ``plots/training.png`` from its ``metrics.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .run import TRAINING_PLOT, plots_dir, read_metrics

__all__ = ["new_figure", "save_figure"]


def new_figure(width: float = 6.4, height: float = 4.0) -> Any:
    """A matplotlib ``Figure`` with its own Agg canvas (matplotlib is imported only here)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG through a temporary file, so a crash never leaves half an image."""
    from .files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return path


def plot_training(run_dir: Path) -> Path | None:
    """plots/training.png: loss, FVU, L0 and dead fraction against rows seen."""
    lines = read_metrics(run_dir)
    if not lines:
        return None
    from matplotlib.ticker import EngFormatter, MaxNLocator

    keys = [k for k in ("loss", "fvu", "l0", "dead_fraction") if any(k in line for line in lines)]
    # Evaluation during training: each evaluator's score (or FVU) on its own panel.
    keys += sorted({k for line in lines for k in line if "/" in k and k.rsplit("/", 1)[1] in ("score", "fvu")})
    if not keys:
        return None
    fig = new_figure(4 * len(keys), 3.2)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        points = [(line["rows"], line[key]) for line in lines if line.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if "/" in key else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("rows")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(4))
        if key in ("loss", "fvu") and points and all(p[1] > 0 for p in points):
            ax.set_yscale("log")
    return save_figure(fig, plots_dir(run_dir) / TRAINING_PLOT)
