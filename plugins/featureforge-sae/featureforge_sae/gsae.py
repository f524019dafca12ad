"""The ``gsae`` trainer: gradient-aware TopK selection (g-SAE; Olmo et al. 2024, arXiv 2411.10397).

Olmo et al. "modify the k-sparse autoencoder architecture by augmenting the TopK activation
function to rely on the gradients of the input activation when selecting the k elements". Here,
for a row ``x`` (training units) with cached gradient ``g = dL/dx`` (``batch["grads"]``, already in
training units: see ``featureforge.DictionaryTrainer.columns``):

* ``z = ReLU(W_enc (x - b_dec) + b_enc)`` (as in ``topk``),
* ``s = z * (1 + beta * |W_dec g_hat|)`` with ``g_hat`` the normalised gradient (``grad_norm``),
* the k latents with the largest ``s`` are kept; their values are ``z`` (``values=z``, default:
  the gradient only chooses) or ``s`` (``values=s``).

Everything else is ``topk``'s: FVU loss, AuxK on dead latents (selected by ``z``), unit-norm
decoder with the parallel gradient removed, initialisation, learning rate, export. The dictionary
is a plain ``TopKSAE``: encoding without gradients (inference, evaluation, exports) is plain
TopK on ``z``. The selection needs dense ``[n, d_dict]`` pre-activations and ``W_dec g`` (two
dense matmuls, plain autograd through the gathered values), so a step costs more than ``topk``'s
fused sparse encoder; the decoder and loss use the same sparse kernel.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from featureforge import BadInputError, OptionError
from featureforge import StepOutput, TrainState

from .options import TopKOptions
from .trainers import TopKTrainer

GRADS_FIX = ("cache gradients with the activations: `featureforge cache --source hf -o grads=true ...` "
             "(or `--source synthetic -o downstream=true`)")


@dataclasses.dataclass
class GSAEOptions(TopKOptions):
    """Options of the ``gsae`` trainer (TopK options plus how gradients steer the selection)."""

    decoder: Literal["free", "unit"] = "unit"
    """unit: decoder rows held at unit norm, which the selection score |W_dec g_hat| assumes (its beta was tuned so); free: as topk's."""
    unit_gradient: bool = False
    """Adam steps on the gradient scaled to unit global norm (topk's default); off: g-SAE's beta was tuned without it."""
    beta: float = 4.0
    """Weight of the gradient term in the selection score s = z * (1 + beta * |W_dec g_hat|); 0 is plain TopK (default chosen by docs/methods/gsae.md)."""
    grad_norm: Literal["row", "batch_rms", "none"] = "row"
    """How g is normalised before scoring: row (each row's gradient to unit norm), batch_rms (divided by the batch's RMS row norm), none (raw, in training units)."""
    values: Literal["z", "s"] = "z"
    """Values of the kept latents: z (ReLU pre-activations; the gradient only selects) or s (the gradient-weighted score)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0:
            raise OptionError(f"beta={self.beta} must be >= 0; use e.g. -o beta=4 (0 selects like plain topk)")


class GSAETrainer(TopKTrainer):
    """g-SAE: TopK whose selection is steered by cached gradients dL/dx (Olmo et al. 2024)."""

    name = "gsae"
    description = "g-SAE: TopK SAE selecting latents by z*(1+beta|W_dec dL/dx|) from cached gradients (Olmo et al. 2024); plain TopK at inference"
    Options = GSAEOptions
    formats: ClassVar[tuple[str, ...]] = ("saelens", "sparsify")
    columns: ClassVar[tuple[str, ...]] = ("acts", "grads")

    @classmethod
    def dictionary_class(cls) -> type:
        from ._models import GradientTopKSAE

        return GradientTopKSAE

    def build(self, d_in: int) -> Any:
        o = self.options
        return self.dictionary_class()(d_in, self.d_dict_for(d_in), o.k, o.beta, o.grad_norm, o.values)

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        x = batch["acts"]
        g = batch.get("grads")
        if g is None:
            raise BadInputError(f"trainer 'gsae' needs gradients with each batch but got none; {GRADS_FIX}")
        if tuple(g.shape) != tuple(x.shape):
            raise BadInputError(f"trainer 'gsae': grads {tuple(g.shape)} do not match acts {tuple(x.shape)}; gradients must be dL/d(acts) row for row")
        from ._kernels import gsae_encode

        o = self.options
        dead = self._dead_latents(dictionary, state)
        k_aux = min(self.k_aux(dictionary.d_in), len(dead)) if dead is not None else 0
        values, indices, aux_values, aux_indices, swapped = gsae_encode(
            dictionary, x, g, dictionary.k, o.beta, o.grad_norm, o.values, dead, k_aux)
        out = self._finish(dictionary, x, values, indices, aux_values, aux_indices, dead)
        out.metrics["gsae_swapped"] = swapped
        return out

    # -- other libraries' layouts: plain TopK at inference, so topk's mapping plus a note ----------
    def export(self, dictionary: Any, fmt: str, out_dir: Path) -> Path:
        from ._interop import export_dictionary

        o = self.options
        note = {
            "selection": "trained with gradient-aware TopK (g-SAE, Olmo et al. 2024): latents selected by "
                         f"z*(1+beta*|W_dec g|), beta={o.beta}, grad_norm={o.grad_norm}, values={o.values}; "
                         "inference without gradients is plain TopK on z",
            "selection_used_gradients": True,
        }
        return export_dictionary(self, dictionary, fmt, Path(out_dir), note)

    @classmethod
    def import_dictionary(cls, src_dir: Path, fmt: str):
        return None  # exports load back as `topk` runs (inference is plain TopK)


TRAINERS = (GSAETrainer,)
