"""A real-loader check skipped for want of the peers' venv says why in pytest's summary (issue #12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
INTEROP = Path(__file__).resolve().parent / "test_sae_interop.py"


def test_a_skipped_real_loader_check_says_why_in_the_summary(tmp_path):
    env = {**os.environ, "PEERS_VENV": str(tmp_path / "no-such-venv")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "slow", "-p", "no:cacheprovider", str(INTEROP),
         "-k", "test_peer_library_reproduces_our_outputs and sparsify"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"real-loader check not run: no peers venv at {tmp_path / 'no-such-venv'}; create it with `make test-slow`" in result.stdout
