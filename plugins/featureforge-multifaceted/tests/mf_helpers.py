"""Constants shared by the featureforge-multifaceted tests (a module with a unique name, not conftest)."""

from __future__ import annotations

import sys
from pathlib import Path

#: The console script, run as a user runs it.
FEATUREFORGE = str(Path(sys.executable).parent / "featureforge")
#: Options of the session's synthetic store.
SYNTHETIC = {"d_in": 32, "n_features": 64, "mean_active": 2.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 1}
