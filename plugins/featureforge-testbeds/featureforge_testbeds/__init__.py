"""featureforge-testbeds: the models and data the method plugins are measured on.

Registers the source ``chess-lm`` (a saved chess model over generated games, ``chess_source``)
and the command ``featureforge tiny-lm`` (the small stdlib-text GPT-2, ``tiny_lm``). The library
side, each its own module: generated chess games (``chess_games``), the tiny chess GPT whose MLPs
are dense, Switch or MoE-X layers (``chess_lm``), Karvonen's board metrics (``board_probe``),
Othello by random play (``othello``), a CNN on scikit-learn's digits (``digits``) and planted
facets on synthetic stores (``planted``). The methods live in their plugins; this distribution
depends on them, never the other way round.

Importing the package is cheap: torch loads when one of the names below is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_NAMES = {
    "ChessLMSource": "chess_source", "ChessLMOptions": "chess_source",
    "ChessLM": "chess_lm", "LMConfig": "chess_lm", "save_lm": "chess_lm", "load_lm": "chess_lm", "train_lm": "chess_lm",
    "upcycle_lm": "chess_lm",
    "make_games": "chess_games", "board_metrics": "board_probe",
    "TINY_LM_DIR": "tiny_lm", "TinyLMConfig": "tiny_lm", "cached_report": "tiny_lm", "train_gpt2": "tiny_lm",
    "train_with_bar": "tiny_lm",
    "SmallCNN": "digits", "merged_digits": "digits", "train_cnn": "digits",
    "UnionDictionary": "planted", "planted_ari": "planted",
}

__all__ = sorted(_NAMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'featureforge_testbeds' has no attribute {name!r}")
