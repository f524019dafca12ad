"""featureforge entry point of ``featureforge-sae``: registers its trainers."""

from __future__ import annotations

import featureforge

from . import coders, gsae, jumprelu, matryoshka, trainers


@featureforge.hookimpl
def featureforge_register_trainers(register):
    for module in (trainers, gsae, jumprelu, matryoshka, coders):
        for trainer in module.TRAINERS:
            register(trainer)


@featureforge.hookimpl
def featureforge_register_evaluators(register):
    from . import coder_report

    for evaluator in coder_report.EVALUATORS:
        register(evaluator)
