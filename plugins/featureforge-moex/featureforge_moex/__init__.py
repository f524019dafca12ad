"""featureforge-moex: MoE-X (Yang et al. 2025, arXiv 2503.07639) for featureforge.

Registers the trainers ``moex`` (MoE-X dictionary) and ``switch`` (Switch SAE). The library side:
``MoEXMLP`` / ``SwitchMLP`` / ``MoEMLP`` layers and ``upcycle`` (``layers``) and the routers
(``routing``); steering an MoE layer by weighting or switching its experts (``steering``). The models MoE-X is measured on (chess and Othello language models, the ``chess-lm``
source) are featureforge-testbeds'. See docs/methods/moex.md.

Importing the package is cheap: torch loads when one of the names below is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_NAMES = {
    "MoEMLP": "layers", "MoEXMLP": "layers", "SwitchMLP": "layers", "DenseMLP": "layers", "upcycle": "layers",
    "equal_active_width": "layers",
    "sparsity_scores": "routing", "load_balance_loss": "routing",
    "MoEXDictionary": "dictionaries", "SwitchDictionary": "dictionaries",
    "MoEXTrainer": "trainers", "SwitchTrainer": "trainers",
    "expert_weighting": "steering", "switched": "steering",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'featureforge_moex' has no attribute {name!r}")
