"""Helpers shared by the featureforge-sae tests (a plain module: conftest names collide across plugins)."""

from __future__ import annotations

import torch

from featureforge.roles import TrainState


def mmcs(directions, truth) -> float:
    """Mean over true features of the best cosine with any decoder row."""
    W = torch.as_tensor(directions).detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    F = torch.as_tensor(truth).float()
    F = F / F.norm(dim=1, keepdim=True)
    return float((F @ W.T).max(1).values.mean())


def fresh_state(d_dict: int, rows_since_fired: int = 0) -> TrainState:
    return TrainState(step=0, rows_seen=0, rows_since_fired=torch.full((d_dict,), rows_since_fired, dtype=torch.long))


def train_steps(trainer, dictionary, batches, lr=None, state=None):
    """The featureforge loop's step contract in a few lines (loss, backward, hooks, Adam)."""
    opt = torch.optim.Adam(dictionary.parameters(), lr=lr or trainer.learning_rate(dictionary))
    state = state or fresh_state(dictionary.d_dict)
    out = None
    for x in batches:
        out = trainer.loss(dictionary, {"acts": x}, state)
        out.loss.backward()
        trainer.before_step(dictionary, state)
        opt.step()
        trainer.after_step(dictionary, state)
        opt.zero_grad(set_to_none=True)
        state.step += 1
        state.rows_seen += len(x)
        state.rows_since_fired += len(x)
        if out.active is not None:
            state.rows_since_fired[out.active] = 0
    return out, state
