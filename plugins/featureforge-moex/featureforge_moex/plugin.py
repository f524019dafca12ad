"""featureforge entry point of ``featureforge-moex``: the moex and switch trainers, the chess-lm source.

Only light modules are imported here; torch loads when a trainer builds or the source runs.
"""

from __future__ import annotations

from typing import Any

import featureforge


@featureforge.hookimpl
def featureforge_register_trainers(register: Any) -> None:
    from .trainers import TRAINERS

    for trainer in TRAINERS:
        register(trainer)


@featureforge.hookimpl
def featureforge_register_sources(register: Any) -> None:
    from .source import ChessLMSource

    register(ChessLMSource)
