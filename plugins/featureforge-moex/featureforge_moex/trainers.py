"""The ``moex`` and ``switch`` trainers: routed dictionaries through the generic featureforge loop.

Loss (training units): FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch (the
normalised MSE of the ``topk`` trainer, so the two compare directly) plus ``lb_coef`` x the
Switch load-balancing loss ``N sum_i f_i P_i``. Decoder rows stay unit norm (gradient parallel to
each row removed before the step, rows renormalised after), as for TopK. No AuxK: dead latents
are reported by the loop but not revived (documented in docs/methods/moex.md).

Neither dictionary exports to the SAELens or sparsify layouts: their encoders route, which a flat
``W_enc``/``b_enc`` cannot express; ``featureforge export`` refuses in one line (``formats = ()``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from featureforge import DictionaryTrainer
from featureforge import StepOutput, TrainState

from .options import MoEXOptions, SwitchOptions


class _RoutedTrainer(DictionaryTrainer):
    formats: ClassVar[tuple[str, ...]] = ()

    def initialize(self, dictionary: Any, sample: Any) -> None:
        import torch

        with torch.no_grad():
            if self.options.b_dec_init == "zeros" or sample is None or len(sample) == 0:
                dictionary.b_dec.zero_()
            else:
                dictionary.b_dec.copy_(sample.float().mean(0))
            if hasattr(dictionary, "b_router"):
                dictionary.b_router.copy_(dictionary.b_dec)

    def learning_rate(self, dictionary: Any, steps: int | None = None) -> float:
        """The TopK trainer's rule (2e-4 at 2^14 latents, times (2^14 / d_dict)^0.5), so equal widths train alike."""
        return 2e-4 / (dictionary.d_dict / 2**14) ** 0.5

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        import torch

        from .routing import load_balance_loss

        x = batch["acts"].to(dictionary.W_dec.dtype)
        values, indices, route = dictionary.sparse_encode(x)
        x_hat = dictionary.sparse_decode(values, indices)
        with torch.no_grad():
            centred = x - x.mean(0, keepdim=True)
            total = (centred * centred).sum().clamp_min(torch.finfo(x.dtype).tiny)
        fvu = ((x - x_hat) ** 2).sum() / total
        balance = load_balance_loss(route, dictionary.n_experts)
        loss = fvu + self.options.lb_coef * balance
        with torch.no_grad():
            fired = values > 0
            hits = torch.zeros(dictionary.d_dict, device=x.device)
            hits.index_add_(0, indices.reshape(-1), fired.reshape(-1).float())
            share = torch.bincount(route.indices.reshape(-1), minlength=dictionary.n_experts).float()
            share /= share.sum()
            entropy = -(share * share.clamp_min(1e-12).log()).sum()
        metrics = {"fvu_train": fvu.detach(), "load_balance": balance.detach(), "expert_entropy": entropy}
        return StepOutput(loss=loss, x_hat=x_hat.detach(), active=hits > 0, l0=fired.sum() / len(x), metrics=metrics)

    def before_step(self, dictionary: Any, state: TrainState) -> None:
        """Remove the gradient component parallel to each unit-norm decoder row."""
        import torch

        grad = dictionary.W_dec.grad
        if grad is None:
            return
        with torch.no_grad():
            grad -= (grad * dictionary.W_dec).sum(1, keepdim=True) * dictionary.W_dec

    def after_step(self, dictionary: Any, state: TrainState) -> None:
        dictionary.normalise_decoder()


class MoEXTrainer(_RoutedTrainer):
    """MoE-X dictionary (Yang et al. 2025, arXiv 2503.07639)."""

    name = "moex"
    description = "MoE-X dictionary: ReLU experts picked by sparsity-aware routing (top_k of n_experts), TopK latents, load balance (Yang et al. 2025)"
    Options = MoEXOptions

    def build(self, d_in: int) -> Any:
        from .dictionaries import MoEXDictionary

        o = self.options
        return MoEXDictionary(d_in, o.n_experts, o.expert_width(d_in), o.k, o.top_k)


class SwitchTrainer(_RoutedTrainer):
    """Switch SAE (Mudide et al. 2024, arXiv 2410.08201)."""

    name = "switch"
    description = "Switch SAE: softmax router on x - b_router picks one expert, TopK in it, load balance alpha*N*sum f_i P_i (Mudide et al. 2024)"
    Options = SwitchOptions

    def build(self, d_in: int) -> Any:
        from .dictionaries import SwitchDictionary

        o = self.options
        return SwitchDictionary(d_in, o.n_experts, o.expert_width(d_in), o.k)


TRAINERS = (MoEXTrainer, SwitchTrainer)
