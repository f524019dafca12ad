"""Figures for evaluators and training: matplotlib on the Agg canvas, with no display and no global
pyplot state, so plotting is safe in threads, tests and headless servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    from .dictionary import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return path
