"""Run only the routed experts: group (row, slot) pairs by expert, one matmul per expert.

Running every expert and masking would cost M/k times the compute; gathering each row's expert
weights would cost n*D*d memory. Grouping sorts the n*k assignments by expert and runs each
expert once on exactly its rows, so work and memory scale with the routed units only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor


class Groups(NamedTuple):
    """Assignments sorted by expert: ``order`` into the flat (row, slot) list, ``rows`` of each, ``sizes`` per expert."""

    order: Tensor
    rows: Tensor
    sizes: list[int]


def group_by_expert(indices: Tensor, n_experts: int) -> Groups:
    """Sort the flat (row, slot) assignments of ``indices [n, k]`` by expert."""
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    rows = torch.div(order, k, rounding_mode="floor")
    sizes = torch.bincount(flat, minlength=n_experts).tolist()
    return Groups(order, rows, sizes)


def expert_hidden(
    x: Tensor, W_enc: Tensor, b_enc: Tensor | None, groups: Groups, k: int, activation: Callable[[Tensor], Tensor]
) -> Tensor:
    """``[n, k, D]`` hidden units of each row's k routed experts: ``act(W_enc[j] x + b_enc[j])``."""
    n = x.shape[0]
    D = W_enc.shape[1]
    pieces = []
    start = 0
    # unbind: one backward that stacks the per-expert grads, not M full-size zero-filled grads.
    encoders = W_enc.unbind(0)
    biases = b_enc.unbind(0) if b_enc is not None else None
    for j, size in enumerate(groups.sizes):
        if size == 0:
            continue
        rows = groups.rows[start : start + size]
        pre = x.index_select(0, rows) @ encoders[j].T
        if biases is not None:
            pre = pre + biases[j]
        pieces.append(activation(pre))
        start += size
    if not pieces:
        return x.new_zeros(n, k, D)
    sorted_hidden = torch.cat(pieces)
    inverse = torch.empty_like(groups.order)
    inverse[groups.order] = torch.arange(len(groups.order), device=groups.order.device)
    return sorted_hidden.index_select(0, inverse).view(n, k, D)


def expert_output(codes: Tensor, W_dec: Tensor, groups: Groups) -> Tensor:
    """``[n, d]`` sum over each row's routed experts of ``codes[row, slot] @ W_dec[expert]``.

    ``codes [n, k, D]`` are the gated hidden units, ``W_dec [M, D, d]`` the experts' decoders.
    """
    n, k, D = codes.shape
    flat = codes.reshape(n * k, D).index_select(0, groups.order)
    out = codes.new_zeros(n, W_dec.shape[-1])
    pieces = []
    start = 0
    decoders = W_dec.unbind(0)
    for j, size in enumerate(groups.sizes):
        if size == 0:
            continue
        pieces.append(flat[start : start + size] @ decoders[j])
        start += size
    if not pieces:
        return out
    decoded = torch.cat(pieces)  # bf16 under autocast: accumulate in the matmuls' dtype
    return out.to(decoded.dtype).index_add(0, groups.rows, decoded)


def scatter_wide(codes: Tensor, indices: Tensor, n_experts: int) -> Tensor:
    """The ``[n, M*D]`` wide hidden layer (zeros outside the routed experts) from ``codes [n, k, D]``."""
    n, k, D = codes.shape
    wide = codes.new_zeros(n, n_experts, D)
    wide.scatter_(1, indices.unsqueeze(-1).expand(n, k, D), codes)
    return wide.view(n, n_experts * D)
