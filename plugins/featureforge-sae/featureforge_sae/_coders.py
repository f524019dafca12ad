"""The dictionaries that read one site and write others: transcoders and crosscoders.

Parameter names follow ``_models`` (sparsify's): ``encoder.weight [d_dict, d_src]``,
``encoder.bias [d_dict]``, ``W_dec [d_dict, d_out]``, ``b_dec [d_out]``.

* :class:`Transcoder` maps a source site's rows ``x`` (e.g. an MLP's input) to an estimate of a
  target site's rows ``y`` (the MLP's output): ``y_hat = W_dec^T f(W_enc x + b_enc) + b_dec``
  (+ ``W_skip x`` for a skip transcoder, Paulo, Belrose et al. 2025, "Transcoders beat sparse
  autoencoders for interpretability", arXiv 2501.18823). The encoder sees ``x`` itself: ``b_dec``
  lives in the target's space (as in SAELens' and sparsify's transcoders). ``f`` is TopK,
  BatchTopK's threshold or JumpReLU.
* :class:`Crosscoder` reads S sites of one width ``d`` and writes all of them (Lindsey et al.
  2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing", Anthropic): the paper's
  per-site encoders summed, ``sum_s W_enc^s x^s``, are one encoder on the sites concatenated,
  which is how it is stored (``encoder.weight [d_dict, S*d]``) so the topk kernels run on it
  unchanged; the decoder writes every site (``W_dec [d_dict, S*d]``, i.e. ``[d_dict, S, d]``).

Units: the loop normalises each site by its own statistics. A transcoder holds two scales
(``input_scale`` for the source, ``target_scale`` for the target), a crosscoder one per site
(``site_scales [S]``); ``encode``/``decode``/``forward`` take and give original units, and
``fold_input_scale`` folds every scale into the weights so the saved file works on raw rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featureforge import BadInputError
from featureforge.dictionary import Dictionary, ForwardOutput

from ._kernels import topk_encode

#: Activations of the topk family and JumpReLU a transcoder can use (a crosscoder: the first two).
ACTIVATIONS = ("topk", "batchtopk", "jumprelu")


class _Coder(Dictionary):
    """Encoder ``nn.Linear(d_src, d_dict)``, decoder ``W_dec [d_dict, d_out]``, ``b_dec [d_out]``,
    one of :data:`ACTIVATIONS`; what transcoders and crosscoders share."""

    def __init__(self, d_in: int, d_dict: int, d_src: int, d_out: int, k: int, activation: str, init_threshold: float):
        super().__init__(d_in, d_dict)
        if activation not in ACTIVATIONS:
            raise BadInputError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.k, self.activation, self.d_src, self.d_out = int(k), activation, int(d_src), int(d_out)
        self.encoder = nn.Linear(d_src, d_dict)
        self.W_dec = nn.Parameter(torch.empty(d_dict, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        with torch.no_grad():
            self.encoder.bias.zero_()
            # Decoder rows: random unit directions (the encoder's rows live in another space).
            self.W_dec.copy_(F.normalize(torch.randn(d_dict, d_out), dim=1))
        if activation == "batchtopk":
            self.register_buffer("threshold", torch.zeros(()))
        elif activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((d_dict,), math.log(init_threshold)))

    # -- the activation -----------------------------------------------------------------------
    def input_centre(self) -> Tensor:
        """What the encoder subtracts from its input (the topk kernels' "b_dec"); see subclasses."""
        raise NotImplementedError

    def pre_activations(self, x: Tensor) -> Tensor:
        """``W_enc (x - centre) + b_enc``, dense ``[n, d_dict]`` (``x`` flat, training units)."""
        return F.linear(x.to(self.W_dec.dtype) - self.input_centre(), self.encoder.weight, self.encoder.bias)

    def jump_threshold(self) -> Tensor:
        """Per-latent JumpReLU thresholds ``exp(log_threshold)`` (> 0)."""
        return self.log_threshold.exp()

    def codes(self, x: Tensor) -> Tensor:
        """Dense codes of flat rows ``x [n, d_src]`` in training units."""
        if self.activation == "topk":
            values, indices, _, _ = topk_encode(x.to(self.W_dec.dtype), self.encoder.weight, self.encoder.bias, self.input_centre(), self.k)
            return values.new_zeros((x.shape[0], self.d_dict)).scatter_(1, indices, values)
        pre = self.pre_activations(x)
        if self.activation == "batchtopk":
            z = F.relu(pre)
            return z * (z > self.threshold.clamp_min(0))
        return pre * (pre > self.jump_threshold())

    def decode_flat(self, codes: Tensor) -> Tensor:
        """``codes W_dec + b_dec`` (flat, training units; no skip term)."""
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Scale every decoder row to unit norm (rows of norm 0 stay 0)."""
        norms = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.div_(norms.clamp_min(torch.finfo(self.W_dec.dtype).tiny))


class Transcoder(_Coder):
    """A (skip) transcoder from a source site of width ``d_in`` to a target site of width
    ``d_out``; see the module docstring. ``W_skip [d_out, d_in]`` (as SAELens and sparsify store
    it) starts at zero, so a skip transcoder starts as a plain one."""

    def __init__(self, d_in: int, d_dict: int, d_out: int, k: int, activation: str = "topk", skip: bool = False,
                 init_threshold: float = 0.5):
        super().__init__(d_in, d_dict, d_in, d_out, k, activation, init_threshold)
        self.skip = bool(skip)
        if self.skip:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in))
        self.register_buffer("target_scale", torch.ones(()))

    @property
    def decoder_directions(self) -> Tensor:
        """[d_dict, d_out]: the directions each latent writes into the target site."""
        return self.W_dec

    def input_centre(self) -> Tensor:
        """None: the encoder sees ``x`` itself (``b_dec`` is in the target's space)."""
        return self.encoder.bias.new_zeros(self.d_src)

    def set_role_scales(self, scales: "dict[str, float]") -> None:
        """The loop's normalisation of each role: ``{"acts": s, "target": t}`` (training rows are
        raw rows times these)."""
        self.input_scale.fill_(float(scales["acts"]))
        self.target_scale.fill_(float(scales.get("target", 1.0)))

    def skip_term(self, x: Tensor) -> Tensor | None:
        """``x W_skip^T`` of source rows in training units (None without a skip connection)."""
        return x.to(self.W_skip.dtype) @ self.W_skip.t() if self.skip else None

    def encode_normalised(self, x: Tensor) -> Tensor:
        return self.codes(x)

    def decode_normalised(self, codes: Tensor) -> Tensor:
        """The target estimate from codes alone (the skip term needs the source: see :meth:`reconstruct_normalised`)."""
        return self.decode_flat(codes)

    def reconstruct_normalised(self, x: Tensor) -> Tensor:
        """The target estimate of source rows, skip term included (training units)."""
        y = self.decode_flat(self.codes(x))
        skip = self.skip_term(x)
        return y if skip is None else y + skip

    def decode(self, codes: Tensor) -> Tensor:
        return self.decode_normalised(codes) / self.target_scale

    def forward(self, x: Tensor) -> ForwardOutput:
        """``(target estimate, codes)`` of source rows in original units (skip term included)."""
        self._check_width(x)
        xs = x.float() * self.input_scale
        codes = self.codes(xs)
        y = self.decode_flat(codes)
        skip = self.skip_term(xs)
        if skip is not None:
            y = y + skip
        return ForwardOutput(y / self.target_scale, codes)

    @torch.no_grad()
    def fold_input_scale(self) -> dict[str, Tensor]:
        """Both scales folded: with s the source's and t the target's scale,
        ``W_enc' = s W_enc``, ``W_dec' = W_dec / t``, ``b_dec' = b_dec / t``, ``W_skip' = W_skip s / t``."""
        s, t = self.input_scale, self.target_scale
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        state["encoder.weight"] = state["encoder.weight"] * s
        state["W_dec"] = state["W_dec"] / t
        state["b_dec"] = state["b_dec"] / t
        if self.skip:
            state["W_skip"] = state["W_skip"] * (s / t)
        state["input_scale"] = torch.ones_like(s)
        state["target_scale"] = torch.ones_like(t)
        return state


class Crosscoder(_Coder):
    """An acausal crosscoder over ``n_sites`` sites of width ``d_in`` each; see the module docstring.

    ``encode``/``forward`` take rows ``[n, S, d]`` (or flat ``[n, S*d]``) and ``forward`` gives
    ``[n, S, d]``; ``decoder_directions`` is ``[d_dict, S, d]``.
    """

    def __init__(self, d_in: int, d_dict: int, n_sites: int, k: int, activation: str = "topk"):
        if activation == "jumprelu":
            raise BadInputError("a crosscoder's activation is topk or batchtopk; pass -o activation=topk")
        self.n_sites = int(n_sites)
        super().__init__(d_in, d_dict, n_sites * d_in, n_sites * d_in, k, activation, 1.0)
        self.register_buffer("site_scales", torch.ones(self.n_sites))
        # Decoder rows of unit norm per site, so every site starts with the same share.
        with torch.no_grad():
            self.W_dec.copy_(F.normalize(self.W_dec.view(d_dict, self.n_sites, d_in), dim=2).view(d_dict, -1) / math.sqrt(self.n_sites))

    @property
    def decoder_directions(self) -> Tensor:
        """[d_dict, S, d]: what each latent writes into every site."""
        return self.W_dec.view(self.d_dict, self.n_sites, self.d_in)

    def input_centre(self) -> Tensor:
        """``b_dec``, as a TopK autoencoder's encoder sees ``x - b_dec`` (Gao et al. 2024)."""
        return self.b_dec

    def set_role_scales(self, scales: "dict[str, Any]") -> None:
        """The loop's normalisation: ``{"sites": [s_1, ..., s_S]}``, one scale per site in order."""
        values = torch.as_tensor([float(v) for v in scales["sites"]], dtype=self.site_scales.dtype)
        if values.shape != self.site_scales.shape:
            raise BadInputError(f"{len(values)} site scales for a crosscoder over {self.n_sites} sites; pass one per site")
        self.site_scales.copy_(values)

    def flat(self, x: Tensor) -> Tensor:
        """Rows ``[n, S, d]`` (or already flat) as ``[n, S*d]``, refusing other shapes in one line."""
        if x.dim() == 3 and tuple(x.shape[1:]) == (self.n_sites, self.d_in):
            return x.reshape(x.shape[0], -1)
        if x.dim() == 2 and x.shape[1] == self.d_src:
            return x
        raise BadInputError(f"crosscoder rows must be [n, {self.n_sites}, {self.d_in}] (sites stacked), not {tuple(x.shape)}; "
                            "pass the sites it was trained on, in order")

    def _scales(self) -> Tensor:
        return self.site_scales.repeat_interleave(self.d_in)

    def encode_normalised(self, x: Tensor) -> Tensor:
        return self.codes(self.flat(x))

    def decode_normalised(self, codes: Tensor) -> Tensor:
        return self.decode_flat(codes).view(codes.shape[0], self.n_sites, self.d_in)

    def encode(self, x: Tensor) -> Tensor:
        return self.codes(self.flat(x).float() * self._scales())

    def decode(self, codes: Tensor) -> Tensor:
        return (self.decode_flat(codes) / self._scales()).view(codes.shape[0], self.n_sites, self.d_in)

    def forward(self, x: Tensor) -> ForwardOutput:
        codes = self.encode(x)
        return ForwardOutput(self.decode(codes), codes)

    @torch.no_grad()
    def fold_input_scale(self) -> dict[str, Tensor]:
        """Each site's scale folded: encoder columns of site s times s_s, decoder columns and
        ``b_dec`` of site s divided by it; the codes are unchanged."""
        s = self._scales()
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        state["encoder.weight"] = state["encoder.weight"] * s
        state["W_dec"] = state["W_dec"] / s
        state["b_dec"] = state["b_dec"] / s
        state["site_scales"] = torch.ones_like(self.site_scales)
        return state


__all__ = ["ACTIVATIONS", "Crosscoder", "Transcoder"]
