"""What the multifaceted benchmarks share: print the result as one JSON object and keep a copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], path: str | None) -> None:
    """Print ``result`` as indented JSON; also write it to ``path`` when given (--json)."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
