#!/usr/bin/env bash
# Create the peer-library virtual environments, for the export round-trip tests
# (plugins/featureforge-sae/tests, -m slow) and the side-by-side benchmarks
# (benchmarks/train_vs_peers.py). The project's own .venv is never touched.
#
#   .peers/venv     ($PEERS_VENV)     SAELens (`sae-lens`) and EleutherAI sparsify (`eai-sparsify`)
#   .peers/venv-dl  ($PEERS_VENV_DL)  saprmarks' dictionary_learning (`dictionary-learning`)
#
# .peers/ sits in the repository (git-ignored), where the slow interop tests and the benchmark look
# by default, so `make test-slow` finds the peers on any machine; the variables move them elsewhere.
#
# dictionary-learning 0.1.0 pins nnsight<0.4, and nnsight declares torchvision, diffusers and an
# older transformers stack as requirements; it gets a venv of its own so those never touch the
# SAELens/sparsify environment. In each venv torch is installed first and pinned (CPU wheel) so the
# peers cannot pull another torch or a CUDA build. The torchvision that nnsight drags in from PyPI
# (0.28.0 for torch 2.13.0) is the CUDA build: its _C.so needs libtorch_cuda.so, so with the CPU
# torch `import torchvision` fails ("operator torchvision::nms does not exist") and transformers'
# import of PreTrainedModel fails with it. Nothing in dictionary_learning or nnsight's LanguageModel
# path uses torchvision, so it is uninstalled again and transformers runs without it.
#
#   bash benchmarks/install_peers.sh            # idempotent: a second run only checks
#   SKIP_DL=1 bash benchmarks/install_peers.sh  # only the SAELens/sparsify venv
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.peers/venv}"
VENV_DL="${PEERS_VENV_DL:-$ROOT/.peers/venv-dl}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_PIN" > "$constraints"

make_venv() {  # make_venv DIR: a venv with the pinned torch installed first
    if [ ! -x "$1/bin/python" ]; then
        mkdir -p "$(dirname "$1")"
        "$PYTHON" -m venv "$1"
    fi
    "$1/bin/python" -m pip --quiet install "$TORCH_PIN"
}

# -- SAELens + sparsify ---------------------------------------------------------------------------
make_venv "$VENV"
"$VENV/bin/python" -m pip --quiet install -c "$constraints" sae-lens eai-sparsify

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
import sae_lens  # noqa: F401
import sparsify  # noqa: F401
versions = {name: md.version(name) for name in ("torch", "sae-lens", "eai-sparsify")}
try:
    md.version("torchvision")
    raise SystemExit("the SAELens/sparsify venv must not hold torchvision")
except md.PackageNotFoundError:
    pass
print("peers venv ready:", versions)
PY

# -- dictionary_learning --------------------------------------------------------------------------
if [ -z "${SKIP_DL:-}" ]; then
    make_venv "$VENV_DL"
    "$VENV_DL/bin/python" -m pip --quiet install -c "$constraints" dictionary-learning
    "$VENV_DL/bin/python" -m pip --quiet uninstall -y torchvision 2>/dev/null || true
    "$VENV_DL/bin/python" - <<'PY'
import importlib.metadata as md
import torch
from dictionary_learning.trainers.top_k import TopKTrainer  # noqa: F401
versions = {name: md.version(name) for name in ("torch", "dictionary-learning", "nnsight")}
print("peers dictionary_learning venv ready:", versions)
PY
fi
