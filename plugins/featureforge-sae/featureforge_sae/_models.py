"""The dictionaries the trainers build (parameters named as in sparsify: ``encoder.weight``
``[d_dict, d_in]``, ``encoder.bias [d_dict]``, ``W_dec [d_dict, d_in]``, ``b_dec [d_in]``).

Every method here works in training units (see ``featureforge.dictionary``); ``encode``/
``decode`` of the base class add the ``input_scale`` conversion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featureforge.dictionary import Dictionary

from ._kernels import dense_decode, gsae_encode, sparse_decode, topk_encode


class _LinearSAE(Dictionary):
    """Encoder ``nn.Linear(d_in, d_dict)``, decoder rows ``W_dec`` and decoder bias ``b_dec``."""

    def __init__(self, d_in: int, d_dict: int):
        super().__init__(d_in, d_dict)
        self.encoder = nn.Linear(d_in, d_dict)
        self.W_dec = nn.Parameter(torch.empty(d_dict, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def decoder_directions(self) -> Tensor:
        return self.W_dec

    @property
    def encoder_directions(self) -> Tensor:
        return self.encoder.weight

    def decode_normalised(self, codes: Tensor) -> Tensor:
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    @torch.no_grad()
    def fold_input_scale(self) -> dict[str, Tensor]:
        """Tensors for raw rows: with s = input_scale, W_enc (s x) = (s W_enc) x and
        (z W_dec + b_dec) / s = z (W_dec / s) + b_dec / s, so the codes (and every threshold, which
        compares codes or pre-activations) are unchanged; input_scale becomes 1. One place for the
        fold: the run folder's weights and the SAELens/sparsify exports both use it."""
        s = self.input_scale
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        state["encoder.weight"] = state["encoder.weight"] * s.to(state["encoder.weight"].dtype)
        state["W_dec"] = state["W_dec"] / s.to(state["W_dec"].dtype)
        state["b_dec"] = state["b_dec"] / s.to(state["b_dec"].dtype)
        state["input_scale"] = torch.ones_like(state["input_scale"])
        return state

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Scale every decoder row to unit norm (rows of norm 0 stay 0)."""
        norms = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.div_(norms.clamp_min(torch.finfo(self.W_dec.dtype).tiny))


class TopKSAE(_LinearSAE):
    """``z = TopK_k(ReLU(W_enc (x - b_dec) + b_enc))``, ``x_hat = W_dec^T z + b_dec``.

    Initialisation follows Gao et al. (2024) and sparsify: the encoder gets nn.Linear's default
    (Kaiming-uniform) weights and zero bias, the decoder the encoder's rows scaled to unit norm.
    """

    def __init__(self, d_in: int, d_dict: int, k: int):
        super().__init__(d_in, d_dict)
        self.k = int(k)
        with torch.no_grad():
            self.encoder.bias.zero_()
            self.W_dec.copy_(self.encoder.weight)
        self.normalise_decoder()

    def sparse_encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(values [n, k], indices [n, k])`` of rows in training units (values >= 0)."""
        values, indices, _, _ = topk_encode(x, self.encoder.weight, self.encoder.bias, self.b_dec, self.k)
        return values, indices

    def sparse_decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """Rows in training units from ``sparse_encode``'s output (sparse gather, no dense codes)."""
        return sparse_decode(values, indices, self.W_dec) + self.b_dec

    def encode_normalised(self, x: Tensor) -> Tensor:
        values, indices = self.sparse_encode(x)
        return values.new_zeros((x.shape[0], self.d_dict)).scatter_(1, indices, values)

    def forward_sparse(self, x: Tensor) -> Tensor:
        return self.sparse_decode(*self.sparse_encode(x))


class GradientTopKSAE(TopKSAE):
    """A ``TopKSAE`` (same tensors, plain TopK ``encode``) that remembers how the ``gsae`` trainer
    selected latents, so evaluators can also reconstruct with live gradients (g-SAE inference)."""

    #: Inference without gradients is plain TopK: exports say so and load back as ``topk`` runs.
    exported_as = TopKSAE

    def __init__(self, d_in: int, d_dict: int, k: int, beta: float, grad_norm: str, values: str):
        super().__init__(d_in, d_dict, k)
        self.beta, self.grad_norm, self.values = float(beta), grad_norm, values

    @classmethod
    def from_topk(cls, dictionary: TopKSAE, beta: float, grad_norm: str = "row", values: str = "z") -> "GradientTopKSAE":
        """A plain TopK dictionary's weights with gradient-aware selection added (for controls:
        how much of g-SAE's gain comes from selecting with gradients at inference alone)."""
        out = cls(dictionary.d_in, dictionary.d_dict, dictionary.k, beta, grad_norm, values)
        out.load_state_dict(dictionary.state_dict())
        out.config = dict(dictionary.config)
        return out.eval()

    def reconstruct_with_grads(self, x: Tensor, grads: Tensor) -> Tensor:
        """``x_hat`` in original units, latents selected as in training from ``grads = dL/dx``.

        Overriding ``Dictionary.reconstruct_with_grads`` declares ``uses_gradients``: evaluators
        score this dictionary both ways (plain TopK, as at inference without gradients, and
        gradient-aware selection).
        """
        from featureforge import BadInputError

        self._check_width(x)
        if tuple(grads.shape) != tuple(x.shape):
            raise BadInputError(f"grads {tuple(grads.shape)} do not match rows {tuple(x.shape)}; pass dL/dx row for row")
        s = self.input_scale
        values, indices, *_ = gsae_encode(self, x.float() * s, grads.float() / s, self.k, self.beta, self.grad_norm, self.values)
        return self.sparse_decode(values, indices) / s


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): trained with the top ``n*k`` activations of a batch,
    used with a single threshold: ``z = ReLU(pre) * 1[ReLU(pre) > threshold]``.

    ``threshold`` is a buffer estimated during training (a running average of the smallest
    activation kept per batch); ``k`` only matters for training.
    """

    def __init__(self, d_in: int, d_dict: int, k: int):
        super().__init__(d_in, d_dict, k)
        self.register_buffer("threshold", torch.zeros(()))

    def pre_activations(self, x: Tensor) -> Tensor:
        """``ReLU(W_enc (x - b_dec) + b_enc)``, dense ``[n, d_dict]``."""
        return F.relu(F.linear(x.to(self.W_dec.dtype) - self.b_dec, self.encoder.weight, self.encoder.bias))

    def encode_normalised(self, x: Tensor) -> Tensor:
        z = self.pre_activations(x)
        return z * (z > self.threshold.clamp_min(0))


class MatryoshkaSAE(BatchTopKSAE):
    """A BatchTopK SAE trained so that nested prefixes of its latents each reconstruct the input
    (Matryoshka SAE; Bussmann et al. 2025, Nabeshima 2024). Inference is BatchTopK's threshold;
    ``prefixes`` (ascending latent counts, the last ``d_dict``) records the nesting: the first
    ``prefixes[i]`` latents form a smaller dictionary on their own."""

    def __init__(self, d_in: int, d_dict: int, k: int, prefixes: tuple[int, ...]):
        super().__init__(d_in, d_dict, k)
        self.prefixes = tuple(int(p) for p in prefixes)

    def prefix_codes(self, codes: Tensor, size: int) -> Tensor:
        """Codes of the dictionary made of the first ``size`` latents (the rest set to 0)."""
        out = codes.clone()
        out[..., size:] = 0
        return out


class JumpReLUSAE(_LinearSAE):
    """``f(x) = JumpReLU_theta(W_enc x + b_enc)``, ``x_hat = W_dec^T f + b_dec`` (Rajamanoharan et
    al. 2024, eq. 8), with one threshold per latent stored as ``log_threshold`` so it stays
    positive. The encoder sees ``x`` itself (not ``x - b_dec``), as in the paper.

    Initialisation: random unit decoder rows, the encoder as their transpose, zero encoder bias,
    every threshold at ``init_threshold``.
    """

    def __init__(self, d_in: int, d_dict: int, init_threshold: float = 0.1):
        super().__init__(d_in, d_dict)
        with torch.no_grad():
            w = torch.randn(d_dict, d_in)
            w /= w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            self.encoder.weight.copy_(w)
            self.encoder.bias.zero_()
        self.log_threshold = nn.Parameter(torch.full((d_dict,), math.log(init_threshold)))

    @property
    def threshold(self) -> Tensor:
        """Per-latent thresholds theta = exp(log_threshold) (> 0)."""
        return self.log_threshold.exp()

    def pre_activations(self, x: Tensor) -> Tensor:
        """``pi(x) = W_enc x + b_enc``, dense ``[n, d_dict]``."""
        return F.linear(x.to(self.W_dec.dtype), self.encoder.weight, self.encoder.bias)

    def encode_normalised(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold)


class ReLUSAE(_LinearSAE):
    """``z = ReLU(W_enc x + b_enc)``, ``x_hat = W_dec^T z + b_dec`` (Anthropic, April 2024 update).

    Decoder rows start as random directions of norm ``init_decoder_norm`` and the encoder as the
    decoder's transpose; both biases start at zero. The input is not centred by ``b_dec``.
    """

    def __init__(self, d_in: int, d_dict: int, init_decoder_norm: float = 0.1):
        super().__init__(d_in, d_dict)
        with torch.no_grad():
            w = torch.randn(d_dict, d_in)
            w *= init_decoder_norm / w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            self.encoder.weight.copy_(w)
            self.encoder.bias.zero_()

    def encode_normalised(self, x: Tensor) -> Tensor:
        return F.relu(self.encoder(x.to(self.W_dec.dtype)))


__all__ = ["TopKSAE", "GradientTopKSAE", "BatchTopKSAE", "MatryoshkaSAE", "JumpReLUSAE", "ReLUSAE", "dense_decode"]
