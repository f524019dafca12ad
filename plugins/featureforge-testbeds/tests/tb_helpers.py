"""Constants shared by the featureforge-testbeds tests (a module with a unique name, not conftest)."""

from __future__ import annotations

import sys
from pathlib import Path

#: The console script, run as a user runs it.
FEATUREFORGE = str(Path(sys.executable).parent / "featureforge")
#: The repository's benchmark scripts (the testbeds' main users).
BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
#: The plugin distributions beside this one.
PLUGINS = Path(__file__).resolve().parents[2]
