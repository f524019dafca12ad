"""Drop-in MLP layers of a GPT-2-style block: dense GELU, Switch MoE and MoE-X, plus upcycling.

An MoE layer is a wide sparse MLP (Yang et al. 2025, eq. 3): ``y = sum_j w_j(x) W_dec[j]^T
act(W_enc[j] x + b_enc[j]) + b_dec``, one hidden layer of width M*D that is zero outside the k
routed experts. ``MoEXMLP`` uses ReLU experts and sparsity-aware routing; ``SwitchMLP`` GELU
experts and a learned softmax router (the paper's Switch baseline at the same top-k). The
ablations of the paper's Table 5 are the other two (activation, router) pairs of ``MoEMLP``.

Every layer passes its hidden units through ``self.hidden`` (an ``nn.Identity``) and its output
through ``self.out``, so forward hooks at ``blocks.i.mlp.hidden`` / ``blocks.i.mlp.out`` read (or
replace) them; an MoE layer builds the dense ``[n, M*D]`` hidden tensor, and decodes from it, only
while a hook is attached to ``hidden``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featureforge import BadInputError, OptionError

from . import grouped, routing

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class DenseMLP(nn.Module):
    """GPT-2's MLP: ``proj(gelu(fc(x)))`` with hidden width ``d_hidden`` (4 d_model by default)."""

    def __init__(self, d_model: int, d_hidden: int, activation: str = "gelu"):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)
        self.activation = activation
        self.hidden = nn.Identity()
        self.out = nn.Identity()
        self.aux_loss: Tensor | None = None

    @property
    def d_hidden(self) -> int:
        return self.fc.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.proj(self.hidden(ACTIVATIONS[self.activation](self.fc(x)))))


class MoEMLP(nn.Module):
    """Top-k mixture of ``n_experts`` one-hidden-layer experts of width ``expert_width``.

    Only the routed experts run (see ``grouped``). After each forward ``aux_loss`` holds the
    Switch load-balancing loss of that call (add ``coef * aux_loss`` to the training loss).
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int = 8,
        expert_width: int = 256,
        top_k: int = 2,
        activation: Literal["relu", "gelu"] = "relu",
        router: Literal["sparsity", "softmax"] = "sparsity",
    ):
        super().__init__()
        routing.check_top_k(top_k, n_experts)
        if expert_width < 1:
            raise OptionError(f"expert_width={expert_width} must be at least 1")
        if activation not in ACTIVATIONS or router not in ("sparsity", "softmax"):
            raise OptionError(f"activation={activation!r} / router={router!r}: use activation relu|gelu and router sparsity|softmax")
        self.d_model, self.n_experts, self.expert_width, self.top_k = d_model, n_experts, expert_width, top_k
        self.activation, self.router = activation, router
        bound = 1 / math.sqrt(d_model)
        self.W_enc = nn.Parameter(torch.empty(n_experts, expert_width, d_model).uniform_(-bound, bound))
        self.b_enc = nn.Parameter(torch.zeros(n_experts, expert_width))
        dec_bound = 1 / math.sqrt(expert_width * top_k)
        self.W_dec = nn.Parameter(torch.empty(n_experts, expert_width, d_model).uniform_(-dec_bound, dec_bound))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        if router == "softmax":
            self.W_router = nn.Parameter(torch.empty(n_experts, d_model).uniform_(-bound, bound))
        self.hidden = nn.Identity()
        self.out = nn.Identity()
        self.aux_loss: Tensor | None = None

    @property
    def d_hidden(self) -> int:
        """Width of the wide sparse hidden layer, M*D."""
        return self.n_experts * self.expert_width

    def route(self, x: Tensor) -> routing.Route:
        """Experts and gates of rows ``x [n, d_model]``."""
        if self.router == "sparsity":
            return routing.choose(routing.sparsity_scores(x, self.W_enc, self.b_enc), self.top_k, "chosen")
        return routing.choose(x @ self.W_router.T, self.top_k, "renormalise")

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.d_model)
        route = self.route(flat)
        groups = grouped.group_by_expert(route.indices, self.n_experts)
        hidden = grouped.expert_hidden(flat, self.W_enc, self.b_enc, groups, self.top_k, ACTIVATIONS[self.activation])
        codes = hidden * route.weights.unsqueeze(-1)
        if self.hidden._forward_hooks:
            # Someone reads (or replaces) blocks.i.mlp.hidden: build the gated wide hidden layer
            # w_j * act(...) and decode it densely, so a hook's replacement reaches the output.
            wide = self.hidden(grouped.scatter_wide(codes, route.indices, self.n_experts).view(*shape[:-1], self.d_hidden))
            y = wide.reshape(-1, self.d_hidden) @ self.W_dec.reshape(self.d_hidden, self.d_model) + self.b_dec
        else:
            y = grouped.expert_output(codes, self.W_dec, groups) + self.b_dec
        self.aux_loss = routing.load_balance_loss(route, self.n_experts)
        return self.out(y.view(shape))


class MoEXMLP(MoEMLP):
    """MoE-X layer: ReLU experts, sparsity-aware routing (paper setting: 8 experts, top-2)."""

    def __init__(self, d_model: int, n_experts: int = 8, expert_width: int = 256, top_k: int = 2):
        super().__init__(d_model, n_experts, expert_width, top_k, activation="relu", router="sparsity")


class SwitchMLP(MoEMLP):
    """Switch-style MoE baseline: GELU experts, learned softmax router, top-k with renormalised gates."""

    def __init__(self, d_model: int, n_experts: int = 8, expert_width: int = 256, top_k: int = 2):
        super().__init__(d_model, n_experts, expert_width, top_k, activation="gelu", router="softmax")


def equal_active_width(d_hidden: int, top_k: int) -> int:
    """Expert width giving ``top_k`` experts the dense MLP's active hidden units (paper: equal active params)."""
    if d_hidden % top_k:
        raise OptionError(f"dense hidden size {d_hidden} is not divisible by top_k={top_k}; pick a top_k that divides it")
    return d_hidden // top_k


@torch.no_grad()
def upcycle(dense: DenseMLP, moe: MoEMLP, noise: float = 0.0, generator: torch.Generator | None = None) -> MoEMLP:
    """Initialise ``moe``'s experts from a trained ``dense`` MLP (sparse upcycling, Komatsuzaki et al. 2023).

    The dense hidden units are cut into ``S = d_hidden / expert_width`` slices; expert j gets
    slice ``j mod S`` (encoder rows, biases and decoder columns). When ``expert_width ==
    d_hidden`` every expert is a full copy, and since the gates sum to 1 the MoE layer then
    reproduces the dense layer exactly at initialisation when the activations match (a GELU MLP
    upcycled into ReLU experts, the paper's GPT-2 case, starts close but not equal). With slices, each
    expert's decoder is multiplied by ``S``: a row routed to k experts of distinct slices with
    equal gates gets ``k/S`` of the dense output, exact when k = S. ``noise`` adds Gaussian noise of
    that relative scale to the encoders so copies can diverge.
    """
    d_model, H, D = dense.fc.in_features, dense.d_hidden, moe.expert_width
    if d_model != moe.d_model:
        raise BadInputError(f"cannot upcycle: the dense MLP has d_model={d_model} but the MoE layer has d_model={moe.d_model}; build the MoE for the same model width")
    if H % D:
        raise BadInputError(f"cannot upcycle: expert_width={D} does not divide the dense hidden size {H}; use an expert width such as {H // moe.top_k}")
    S = H // D
    fc_w, fc_b = dense.fc.weight.view(S, D, d_model), dense.fc.bias.view(S, D)
    proj = dense.proj.weight.T.reshape(S, D, d_model)
    for j in range(moe.n_experts):
        s = j % S
        moe.W_enc[j].copy_(fc_w[s])
        moe.b_enc[j].copy_(fc_b[s])
        moe.W_dec[j].copy_(proj[s] * S)
    if noise > 0:
        moe.W_enc.add_(torch.randn(moe.W_enc.shape, generator=generator) * noise * moe.W_enc.std())
    moe.b_dec.copy_(dense.proj.bias)
    return moe
