"""The optimiser step's contract with a trainer, written once: the loop, ``featureforge.testing``
and the step benchmarks all call these, so a trainer tested alone sees exactly what it sees in
``featureforge train``.

Order per step: ``loss`` and ``backward`` (per data shard, the loop's job), then
:func:`apply_update` (``before_step`` hook, optimiser, ``after_step`` hook, gradients cleared),
then :func:`mark_fired` (rows since each latent fired).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..roles import DictionaryTrainer, TrainState


def fresh_state(d_dict: int, rows_since_fired: int = 0, **fields: Any) -> TrainState:
    """A ``TrainState`` at step 0 in which every latent last fired ``rows_since_fired`` rows ago."""
    return TrainState(step=0, rows_seen=0, rows_since_fired=torch.full((d_dict,), rows_since_fired, dtype=torch.long), **fields)


def apply_update(trainer: DictionaryTrainer, dictionary: Any, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    """The trainer's hooks around one optimiser step on gradients already accumulated."""
    trainer.before_step(dictionary, state)
    optimizer.step()
    trainer.after_step(dictionary, state)
    optimizer.zero_grad(set_to_none=True)


def mark_fired(state: TrainState, active: Sequence[Any], rows: int) -> None:
    """Advance every latent's rows-since-fired by ``rows`` and reset those any shard fired (bool masks)."""
    with torch.no_grad():
        state.rows_since_fired.add_(rows)
        fired = [a for a in active if a is not None]
        if fired:
            mask = torch.stack([f.to(torch.int32) for f in fired]).amax(0)
            state.all_reduce(mask, "max")
            state.rows_since_fired.masked_fill_(mask.bool(), 0)
