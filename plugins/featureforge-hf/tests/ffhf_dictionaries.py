"""Two reference dictionaries for splice tests: x̂ = x (identity) and x̂ = 0 (zero ablation)."""

from __future__ import annotations

import torch

from featureforge.dictionary import Dictionary


class Identity(Dictionary):
    """x̂ = x (codes = rows)."""

    def __init__(self, d_in: int):
        super().__init__(d_in, d_in)

    def encode_normalised(self, x):
        return x

    def decode_normalised(self, codes):
        return codes


class Zero(Identity):
    """x̂ = 0."""

    def decode_normalised(self, codes):
        return torch.zeros_like(codes)


class GradientStep(Zero):
    """Plain encode gives x̂ = 0; ``reconstruct_with_grads`` gives x̂ = x − eps·dL/dx, a small step
    down the loss, so its CE must fall below the clean CE if the gradients are the right ones, row
    for row."""

    def __init__(self, d_in: int, eps: float):
        super().__init__(d_in)
        self.eps = eps

    def reconstruct_with_grads(self, x, grads):
        return x - self.eps * grads
