"""The real-loader checks and benchmarks/train_vs_peers.py find the peers' venvs inside the
repository by default (issue #12); that a skipped
check says why is tested in featureforge-sae, whose tests hold the checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INTEROP = REPO / "plugins" / "featureforge-sae" / "tests" / "test_sae_interop.py"


def test_default_peers_folder_is_inside_the_repository_and_git_ignored():
    for text in (REPO / "benchmarks" / "install_peers.sh", REPO / "benchmarks" / "train_vs_peers.py", INTEROP):
        assert "/work/peers-venv" not in text.read_text(), text
    assert 'VENV="${PEERS_VENV:-$ROOT/.peers/venv}"' in (REPO / "benchmarks" / "install_peers.sh").read_text()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".peers/venv/bin/python"], cwd=REPO)
    assert ignored.returncode == 0, ".peers/ must be git-ignored"


def _benchmark_help(env: dict[str, str]) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PEERS_VENV")}, **env}
    shown = subprocess.run([sys.executable, "benchmarks/train_vs_peers.py", "--help"], cwd=REPO, capture_output=True,
                           text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    return "".join(shown.stdout.split())  # argparse wraps long paths anywhere


def test_train_vs_peers_defaults_to_the_repository_folder_and_the_variables_override(tmp_path):
    default = _benchmark_help({})
    assert f"else.peers/venv:{REPO}/.peers/venv)" in default and f"else.peers/venv-dl:{REPO}/.peers/venv-dl)" in default
    moved = _benchmark_help({"PEERS_VENV": str(tmp_path / "a"), "PEERS_VENV_DL": str(tmp_path / "b")})
    assert f"else.peers/venv:{tmp_path}/a)" in moved and f"else.peers/venv-dl:{tmp_path}/b)" in moved
