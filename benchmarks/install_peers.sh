#!/usr/bin/env bash
# Create /work/peers-venv (or $PEERS_VENV): a separate virtual environment holding the peer
# libraries SAELens (`sae-lens`) and EleutherAI sparsify (`eai-sparsify`), for the export
# round-trip tests (plugins/featureforge-sae/tests, -m slow) and the side-by-side benchmarks.
# The project's own .venv is never touched. torch is installed first and pinned (CPU wheel) so
# the peers cannot pull another torch or a CUDA build; torchvision is never installed.
#
#   bash benchmarks/install_peers.sh            # idempotent: a second run only checks
set -euo pipefail

VENV="${PEERS_VENV:-/work/peers-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --quiet)

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_PIN" > "$constraints"

"${PIP[@]}" install "$TORCH_PIN"
"${PIP[@]}" install -c "$constraints" sae-lens eai-sparsify

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
import sae_lens  # noqa: F401
import sparsify  # noqa: F401
versions = {name: md.version(name) for name in ("torch", "sae-lens", "eai-sparsify")}
print("peers-venv ready:", versions)
PY
