"""The ``jumprelu`` trainer: JumpReLU SAE with a direct L0 penalty (Rajamanoharan et al. 2024,
"Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders",
arXiv 2407.14435).

Equations followed (numbers as in the paper):

* eq. 4: ``JumpReLU_theta(z) = z H(z - theta)``, one threshold ``theta_i > 0`` per latent
  (stored as ``log theta_i``);
* eq. 8: ``f(x) = JumpReLU_theta(W_enc x + b_enc)``, ``x_hat = W_dec f(x) + b_dec``;
* eqs. 9-10: ``L = ||x - x_hat||^2 + lambda sum_i H(pi_i(x) - theta_i)``, averaged over the
  batch; here the squared error is divided by d_in so it is the paper's loss for rows of unit
  mean squared norm (featureforge's training units have mean squared norm d_in);
* eqs. 11-12 (straight-through estimators with the rectangle kernel ``K(u) = 1[|u| < 1/2]`` of
  bandwidth ``epsilon``): ``dJumpReLU/dtheta := -(theta / epsilon) K((z - theta) / epsilon)``,
  ``dH/dtheta := -(1 / epsilon) K((z - theta) / epsilon)``; ``dJumpReLU/dz = H(z - theta)`` and
  no gradient reaches ``z`` through the L0 term. The kernels live in ``_kernels``.

``lambda`` rises linearly over ``l0_warmup_rows`` (the paper warms up its sparsity
coefficient); decoder rows are kept at unit norm as for ``topk``. The encoder bias starts at
``-W_enc b_dec`` so that pre-activations start centred on the data (the encoder itself sees raw
``x``, as in eq. 8, which is also how the SAELens export says ``apply_b_dec_to_input: false``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from featureforge import StepOutput, TrainState

from .options import JumpReLUOptions
from .trainers import SAETrainer, UnitDecoder, init_b_dec, sum_sq_centred, warmed_up


class JumpReLUTrainer(UnitDecoder, SAETrainer):
    """JumpReLU SAE trained on reconstruction + lambda * L0 through straight-through estimators."""

    name = "jumprelu"
    description = "JumpReLU SAE: per-latent learned thresholds, L0 penalty via straight-through estimators (Rajamanoharan et al. 2024)"
    Options = JumpReLUOptions
    formats: ClassVar[tuple[str, ...]] = ("saelens",)

    @classmethod
    def dictionary_class(cls) -> type:
        from ._models import JumpReLUSAE

        return JumpReLUSAE

    def build(self, d_in: int) -> Any:
        return self.dictionary_class()(d_in, self.options.check_for(d_in), self.options.init_threshold)

    def initialize(self, dictionary: Any, sample: Any) -> None:
        import torch

        init_b_dec(dictionary, sample, self.options.b_dec_init)
        with torch.no_grad():  # pi(x) = W_enc (x - b_dec) at the start
            dictionary.encoder.bias.copy_(-(dictionary.encoder.weight @ dictionary.b_dec))

    def learning_rate(self, dictionary: Any, steps: int | None = None) -> float:
        """1e-3 at 2^14 latents, times (2^14 / d_dict)^0.5: topk's scaling rule at 5x its base,
        because thresholds move by Adam steps in log space (a threshold can change by a factor
        e only after ~1/lr steps) and the encoder learns only from latents above threshold.
        On the synthetic benchmark topk's own rate left L0 and FVU far from converged."""
        return 1e-3 / math.sqrt(dictionary.d_dict / 2**14)

    def l0_weight(self, rows_seen: int) -> float:
        return warmed_up(self.options.l0_coef, rows_seen, self.options.l0_warmup_rows)

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        x = batch["acts"].to(dictionary.W_dec.dtype)
        coef = self.l0_weight(state.rows_seen if state is not None else 0)
        return jumprelu_step(dictionary.pre_activations(x), dictionary.threshold, dictionary.W_dec, dictionary.b_dec, x,
                             self.options.bandwidth, coef)


def jumprelu_step(pre: Any, theta: Any, W_dec: Any, b_dec: Any, target: Any, eps: float, coef: float,
                  offset: Any = None) -> StepOutput:
    """Eqs. 8-10 for one batch: ``f = JumpReLU_theta(pre)``, ``x_hat = f W_dec + b_dec (+ offset)``,
    loss = squared error / (n d) + coef * L0; ``target`` is what ``x_hat`` must match (the input
    for an autoencoder, the target site for a transcoder, whose skip term is ``offset``)."""
    import torch

    from ._kernels import heaviside_step, jumprelu

    f = jumprelu(pre, theta, eps)  # eq. 8
    x_hat = f @ W_dec + b_dec
    if offset is not None:
        x_hat = x_hat + offset.to(x_hat.dtype)
    target = target.to(x_hat.dtype)
    n, d = target.shape
    diff = (target - x_hat).reshape(-1)
    reconstruction = torch.dot(diff, diff) / (n * d)  # eq. 9, rows at unit mean squared norm
    l0 = heaviside_step(pre, theta, eps).sum(1).mean()  # eq. 10
    loss = reconstruction + coef * l0
    with torch.no_grad():
        fired = f > 0
        fvu = torch.dot(diff, diff) / sum_sq_centred(target)
    return StepOutput(loss=loss, x_hat=x_hat.detach(), active=fired.any(0), l0=l0.detach(),
                      metrics={"fvu_train": fvu, "l0_coef": coef, "threshold_mean": theta.detach().mean()})


TRAINERS = (JumpReLUTrainer,)
