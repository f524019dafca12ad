"""featureforge-moex: MoE-X (Yang et al. 2025, arXiv 2503.07639) for featureforge.

Registers the trainers ``moex`` (MoE-X dictionary) and ``switch`` (Switch SAE) and the source
``chess-lm``. The library side: ``MoEXMLP`` / ``SwitchMLP`` / ``MoEMLP`` layers and ``upcycle``
(``layers``), the routers (``routing``), and the chess benchmark's pieces (``chess_games``,
``chess_lm``, ``board_probe``). See docs/methods/moex.md.

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
    "ChessLMSource": "source", "ChessLMOptions": "source",
    "ChessLM": "chess_lm", "LMConfig": "chess_lm", "save_lm": "chess_lm", "load_lm": "chess_lm", "train_lm": "chess_lm",
    "make_games": "chess_games", "board_metrics": "board_probe",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'featureforge_moex' has no attribute {name!r}")
