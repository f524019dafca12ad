"""Routers: MoE-X's sparsity-aware scores, a plain softmax router, top-k choice, load balance.

Sparsity-aware routing (Yang et al. 2025, arXiv 2503.07639, section 4.2): treat the D encoder rows
of expert j as draws from a Gaussian with per-input-dimension mean ``mu_j`` and variance
``sigma_j^2`` (computed over those D rows, one value per input dimension). A unit's pre-activation
``w^T x + b`` is then ~ N(mu_j^T x + mean(b_j), (sigma_j^2)^T x^2 + var(b_j)), so the expected
fraction of active ReLU units is Phi(mu_h / sigma_h). The router prefers experts expected to be
sparser: score = -erf(mu_h / (sqrt(2) sigma_h)) = 1 - 2 Phi(mu_h / sigma_h). The bias terms are our
addition (the paper's experts have biases but its estimator omits them); with zero biases the
score is exactly the paper's. Cost: O(M D d) for the statistics plus O(N M d) for the scores,
never running an expert.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .options import check_top_k  # noqa: F401  (torch-free, so listing plugins stays cheap)

#: Floor of sigma_h^2, so an all-zero input (sigma_h = 0) gives score -erf(0) = 0, not NaN.
VARIANCE_FLOOR = 1e-12


class Route(NamedTuple):
    """Where each row goes: ``indices [n, k]`` experts, ``weights [n, k]`` gates, ``probs [n, M]`` for load balance."""

    indices: Tensor
    weights: Tensor
    probs: Tensor


def expert_statistics(W_enc: Tensor, b_enc: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-expert ``(mu [M,d], var [M,d], bias mean [M], bias var [M])`` over each expert's D rows."""
    mu = W_enc.mean(1)
    var = W_enc.var(1, unbiased=False)
    if b_enc is None:
        zeros = W_enc.new_zeros(W_enc.shape[0])
        return mu, var, zeros, zeros
    return mu, var, b_enc.mean(1), b_enc.var(1, unbiased=False)


def sparsity_scores(x: Tensor, W_enc: Tensor, b_enc: Tensor | None = None) -> Tensor:
    """``[n, M]`` MoE-X routing scores ``-erf(mu_h / (sqrt(2) sigma_h))`` of rows ``x [n, d]``.

    ``W_enc [M, D, d]`` holds each expert's encoder rows, ``b_enc [M, D]`` their biases.
    """
    mu, var, b_mu, b_var = expert_statistics(W_enc, b_enc)
    mean = x @ mu.T + b_mu
    variance = (x * x) @ var.T + b_var
    return -torch.erf(mean / (math.sqrt(2.0) * variance.clamp_min(VARIANCE_FLOOR).sqrt()))


def choose(scores: Tensor, top_k: int, normalise: str) -> Route:
    """Top-k experts by score, with gates.

    ``normalise="chosen"`` (MoE-X): softmax over the chosen scores only. ``"renormalise"``
    (softmax router): softmax over all experts, the chosen probabilities rescaled to sum to 1.
    ``probs`` is always the softmax over all experts (the P_i of the load-balancing loss).
    """
    probs = torch.softmax(scores.float(), dim=-1)
    top, indices = scores.topk(top_k, dim=-1)
    if normalise == "chosen":
        weights = torch.softmax(top.float(), dim=-1)
    else:
        chosen = probs.gather(-1, indices)
        weights = chosen / chosen.sum(-1, keepdim=True)
    return Route(indices, weights.to(scores.dtype), probs)


def load_balance_loss(route: Route, n_experts: int) -> Tensor:
    """Switch Transformer's auxiliary loss ``M * sum_i f_i P_i`` (Fedus et al. 2021, eq. 4).

    ``f_i``: fraction of (row, slot) assignments sent to expert i (no gradient); ``P_i``: mean
    router probability of expert i. Equals 1 when routing is uniform.
    """
    counts = torch.bincount(route.indices.reshape(-1), minlength=n_experts).to(route.probs.dtype)
    f = counts / counts.sum().clamp_min(1)
    P = route.probs.reshape(-1, n_experts).mean(0)
    return n_experts * (f * P).sum()
