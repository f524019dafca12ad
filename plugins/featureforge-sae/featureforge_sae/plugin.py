"""featureforge entry point of ``featureforge-sae``: registers the topk, batchtopk and relu trainers."""

from __future__ import annotations

import featureforge

from .trainers import TRAINERS


@featureforge.hookimpl
def featureforge_register_trainers(register):
    for trainer in TRAINERS:
        register(trainer)
    register(__import__("featureforge_sae.gsae", fromlist=["GSAETrainer"]).GSAETrainer)  # g-SAE (gradient-aware TopK)
