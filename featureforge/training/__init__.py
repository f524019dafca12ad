"""The generic training loop: settings, schedules, sweep expansion, the loop, checkpoints and
evaluation during training.

Modules, one job each: ``_settings`` (``TrainConfig`` and its checks), ``_schedule`` (the
learning rate per step and the dead-latent horizon), ``_sweep`` (one member config per swept
value), ``_step`` (the optimiser step's contract with a trainer), ``_loop`` (``train``: one pass over the store feeding every member), ``_checkpoint``
(atomic checkpoints and resume), ``_lr_search`` (the optional learning-rate race) and
``_during`` (evaluators run every ``eval_every`` steps).
"""

from typing import Any

from ._schedule import DEFAULT_DEAD_AFTER, dead_after_for, lr_at
from ._settings import TrainConfig, check_trainer_class, resolve_config
from ._sweep import expand_sweep

__all__ = [
    "DEFAULT_DEAD_AFTER",
    "TrainConfig",
    "apply_update",
    "check_gradient_store",
    "check_trainer_class",
    "dead_after_for",
    "expand_sweep",
    "fresh_state",
    "lr_at",
    "mark_fired",
    "resolve_config",
    "train",
]

_NEEDS_TORCH = {"train": "._loop", "check_gradient_store": "._loop",
                "apply_update": "._step", "fresh_state": "._step", "mark_fired": "._step"}


def __getattr__(name: str) -> Any:
    # The loop needs torch; loaded on first use so that reading settings does not.
    if name in _NEEDS_TORCH:
        import importlib

        return getattr(importlib.import_module(_NEEDS_TORCH[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
