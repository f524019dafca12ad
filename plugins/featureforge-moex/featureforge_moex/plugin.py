"""featureforge entry point of ``featureforge-moex``: the moex and switch trainers.

Only light modules are imported here; torch loads when a trainer builds.
"""

from __future__ import annotations

from typing import Any

import featureforge


@featureforge.hookimpl
def featureforge_register_trainers(register: Any) -> None:
    from .trainers import TRAINERS

    for trainer in TRAINERS:
        register(trainer)
