"""featureforge entry point of ``featureforge-testbeds``: the chess-lm source and the tiny-lm command.

Only light modules are imported here; torch loads when the source runs or a model trains.
"""

from __future__ import annotations

from typing import Any

import featureforge


@featureforge.hookimpl
def featureforge_register_sources(register: Any) -> None:
    from .chess_source import ChessLMSource

    register(ChessLMSource)


@featureforge.hookimpl
def featureforge_register_commands(cli: Any) -> None:
    from .cli import add_commands

    add_commands(cli)
