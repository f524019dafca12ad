"""Progress bars for long work (rows/s on stderr); ``FEATUREFORGE_PROGRESS=0`` silences them."""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_bar(total: int | None, desc: str, *, initial: int = 0, unit: str = "rows", enabled: bool | None = None) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = os.environ.get("FEATUREFORGE_PROGRESS", "1") != "0"
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 5.0,
        disable=not enabled,
        file=sys.stderr,
    )
