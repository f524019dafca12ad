"""Schedules over a run: the learning rate at each step and the dead-latent horizon in rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..roles import DictionaryTrainer
    from ._settings import TrainConfig

# -- dead latents ----------------------------------------------------------------------------------
#: Gao et al.'s (2024) and sparsify's horizon: rows without firing after which a latent is dead.
DEFAULT_DEAD_AFTER = 10_000_000


def dead_after_for(trainer: "DictionaryTrainer", dictionary: Any, cfg: "TrainConfig") -> int:
    """The run's dead-latent horizon in rows: the trainer's decision given the loop's ``-t
    dead_after``, else ``DEFAULT_DEAD_AFTER``."""
    return int(trainer.dead_after(dictionary, cfg.dead_after) or DEFAULT_DEAD_AFTER)


# -- schedule ---------------------------------------------------------------------------------------
def lr_at(step: int, total_steps: int, base: float, cfg: "TrainConfig") -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last ``decay_fraction``."""
    warmup = min(cfg.warmup_steps, max(1, total_steps // 10))
    if step < warmup:
        return base * (step + 1) / warmup
    decay_steps = int(total_steps * cfg.decay_fraction)
    if decay_steps > 0 and step >= total_steps - decay_steps:
        return base * max(0.0, (total_steps - step) / decay_steps)
    return base
