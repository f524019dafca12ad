"""featureforge entry point of ``featureforge-multifaceted``: the ``facets`` evaluator and the dashboard commands."""

from __future__ import annotations

from typing import Any

import featureforge


@featureforge.hookimpl
def featureforge_register_evaluators(register: Any) -> None:
    from .evaluator import FacetsEvaluator

    register(FacetsEvaluator)


@featureforge.hookimpl
def featureforge_register_commands(cli: Any) -> None:
    from .cli import add_commands

    add_commands(cli)
