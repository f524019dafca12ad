"""featureforge entry point of ``featureforge-sae``: registers its trainers."""

from __future__ import annotations

import featureforge

from . import gsae, jumprelu, matryoshka, trainers


@featureforge.hookimpl
def featureforge_register_trainers(register):
    for module in (trainers, gsae, jumprelu, matryoshka):
        for trainer in module.TRAINERS:
            register(trainer)
