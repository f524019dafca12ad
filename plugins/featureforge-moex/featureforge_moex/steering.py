"""Steering an MoE layer by its experts: weighting them, or switching them on and off, at inference.

Two handles, both through the core's steering interface (a live model's hook site and
``featureforge.live.LiveModel``'s ``replace=`` / ``patch``), in the spirit of "Mixture of Tunable
Experts" (steering a large MoE by turning experts up, down, on or off at inference):

* :func:`expert_weighting` is a row replacement for the layer's ``hidden`` site (``blocks.i.mlp.hidden``,
  the gated wide hidden layer ``[n, M*D]``): expert j's slice is multiplied by ``g_j``, so its
  contribution to the MLP output is scaled (0 removes it; the other experts' gates are unchanged).
  All ``g_j = 1`` gives the rows back bit for bit.
* :func:`switched` re-routes: inside the block, ``off`` experts are never chosen and ``on`` experts
  are always chosen (their score is set just above the row's best, so the router's own gate rule
  weighs them), for every forward pass of the layer.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from featureforge import BadInputError

from .layers import MoEMLP
from .routing import Route, choose, sparsity_scores

__all__ = ["expert_weighting", "switched"]


def _check(layer: MoEMLP, experts: Sequence[int]) -> list[int]:
    if not isinstance(layer, MoEMLP):
        raise BadInputError(f"expert steering needs an MoE layer (MoEXMLP, SwitchMLP, MoEMLP), not {type(layer).__name__}")
    bad = [int(j) for j in experts if not 0 <= int(j) < layer.n_experts]
    if bad:
        raise BadInputError(f"expert {bad[0]} is outside the layer's {layer.n_experts} experts (0..{layer.n_experts - 1})")
    return [int(j) for j in experts]


def expert_weighting(layer: MoEMLP, weights: Mapping[int, float]) -> Callable[[Tensor], Tensor]:
    """Row replacement ``hidden [n, M*D] -> hidden`` scaling expert j's slice by ``weights[j]`` (others × 1)."""
    chosen = _check(layer, list(weights))
    scale = torch.ones(layer.n_experts)
    for j in chosen:
        scale[j] = float(weights[j])
    width = layer.expert_width

    def apply(rows: Tensor) -> Tensor:
        if rows.shape[-1] != layer.d_hidden:
            raise BadInputError(f"expert weighting acts on the layer's hidden site ({layer.d_hidden} wide), got rows of width {rows.shape[-1]}; "
                                "hook blocks.i.mlp.hidden")
        per_unit = scale.to(rows.device, rows.dtype).repeat_interleave(width)
        return rows * per_unit

    return apply


@contextlib.contextmanager
def switched(layer: MoEMLP, on: Sequence[int] = (), off: Sequence[int] = ()) -> Iterator[MoEMLP]:
    """Inside the block ``layer`` never routes to ``off`` and always routes to ``on`` experts."""
    on, off = _check(layer, on), _check(layer, off)
    if set(on) & set(off):
        raise BadInputError(f"expert {sorted(set(on) & set(off))[0]} is both switched on and off; pick one")
    if len(on) > layer.top_k:
        raise BadInputError(f"{len(on)} experts switched on but the layer routes only top_k={layer.top_k} per row")
    if layer.n_experts - len(off) < layer.top_k:
        raise BadInputError(f"switching off {len(off)} of {layer.n_experts} experts leaves fewer than top_k={layer.top_k} to route to")
    def route(x: Tensor) -> Route:
        if layer.router == "sparsity":
            scores, normalise = sparsity_scores(x, layer.W_enc, layer.b_enc), "chosen"
        else:
            scores, normalise = x @ layer.W_router.T, "renormalise"
        scores = scores.clone()
        if off:
            scores[:, off] = float("-inf")
        if on:
            best = scores.max(-1, keepdim=True).values
            scores[:, on] = best + 1e-3
        return choose(scores, layer.top_k, normalise)

    layer.route = route  # type: ignore[method-assign]
    try:
        yield layer
    finally:
        del layer.route  # the class's own router again
