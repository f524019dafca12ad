"""Routed dictionaries: a flat dictionary of ``n_experts * expert_width`` latents whose encoder
runs only the routed experts.

Parameters: ``W_enc [M, D, d_in]``, ``b_enc [M, D]`` (the experts' encoders), ``W_dec [M*D, d_in]``
(one unit-norm decoder row per latent, latent ``j*D + u`` = unit u of expert j), ``b_dec [d_in]``.
Encoding: route ``x - b_dec``, compute the routed experts' ``ReLU(W_enc[j] (x - b_dec) + b_enc[j])``,
multiply by the expert's gate, keep the top ``k`` gated values; decoding is flat,
``codes @ W_dec + b_dec``, so every evaluator that uses encode/decode/decoder_directions works.

* ``MoEXDictionary``: sparsity-aware routing (``routing.sparsity_scores``) from the experts' own
  encoder rows, top ``top_k`` experts, gates = softmax over the chosen scores.
* ``SwitchDictionary`` (Mudide et al. 2024, arXiv 2410.08201): router ``softmax(W_router (x -
  b_router))``, the single most probable expert, gate = its probability.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featureforge.dictionary import Dictionary

from . import grouped, routing


class RoutedDictionary(Dictionary):
    """Shared encoder/decoder of the routed dictionaries; subclasses define ``route``."""

    top_k: int = 1

    def __init__(self, d_in: int, n_experts: int, expert_width: int, k: int):
        super().__init__(d_in, n_experts * expert_width)
        self.n_experts, self.expert_width, self.k = n_experts, expert_width, k
        bound = 1 / math.sqrt(d_in)
        self.W_enc = nn.Parameter(torch.empty(n_experts, expert_width, d_in).uniform_(-bound, bound))
        self.b_enc = nn.Parameter(torch.zeros(n_experts, expert_width))
        self.W_dec = nn.Parameter(self.W_enc.detach().reshape(-1, d_in).clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.normalise_decoder()

    @property
    def decoder_directions(self) -> Tensor:
        return self.W_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows: a latent's scale lives in its code (gate included)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny))

    def route(self, centred: Tensor) -> routing.Route:
        raise NotImplementedError

    def sparse_encode(self, x: Tensor) -> tuple[Tensor, Tensor, routing.Route]:
        """``(values [n, k], latent indices [n, k], route)`` of rows in training units."""
        centred = x.to(self.W_dec.dtype) - self.b_dec
        route = self.route(centred)
        groups = grouped.group_by_expert(route.indices, self.n_experts)
        hidden = grouped.expert_hidden(centred, self.W_enc, self.b_enc, groups, self.top_k, F.relu)
        gated = (hidden * route.weights.unsqueeze(-1)).flatten(1)
        values, slots = gated.topk(min(self.k, gated.shape[1]), dim=1, sorted=False)
        D = self.expert_width
        experts = route.indices.gather(1, torch.div(slots, D, rounding_mode="floor"))
        return values, experts * D + slots % D, route

    def sparse_decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """Rows in training units from ``sparse_encode``'s values and latent indices."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values.to(self.W_dec.dtype), mode="sum") + self.b_dec

    def encode_normalised(self, x: Tensor) -> Tensor:
        values, indices, _ = self.sparse_encode(x)
        return values.new_zeros((x.shape[0], self.d_dict)).scatter_(1, indices, values)

    def decode_normalised(self, codes: Tensor) -> Tensor:
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec


class MoEXDictionary(RoutedDictionary):
    """MoE-X dictionary: ReLU experts chosen by sparsity-aware routing."""

    def __init__(self, d_in: int, n_experts: int, expert_width: int, k: int, top_k: int = 2):
        routing.check_top_k(top_k, n_experts)
        self.top_k = top_k
        super().__init__(d_in, n_experts, expert_width, k)

    def route(self, centred: Tensor) -> routing.Route:
        scores = routing.sparsity_scores(centred, self.W_enc, self.b_enc)
        return routing.choose(scores, self.top_k, "chosen")


class SwitchDictionary(RoutedDictionary):
    """Switch SAE: a softmax router on ``x - b_router`` picks one expert; its probability gates it."""

    def __init__(self, d_in: int, n_experts: int, expert_width: int, k: int):
        super().__init__(d_in, n_experts, expert_width, k)
        bound = 1 / math.sqrt(d_in)
        self.W_router = nn.Parameter(torch.empty(n_experts, d_in).uniform_(-bound, bound))
        self.b_router = nn.Parameter(torch.zeros(d_in))

    def route(self, centred: Tensor) -> routing.Route:
        x = centred + self.b_dec  # the router has its own centring, b_router (Mudide et al.)
        probs = torch.softmax((x - self.b_router) @ self.W_router.T, dim=-1)
        weights, indices = probs.max(dim=-1, keepdim=True)
        return routing.Route(indices, weights, probs)
