"""The ``matryoshka`` trainer: Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda
2025, "Learning Multi-Level Features with Matryoshka Sparse Autoencoders", arXiv 2503.17547;
Nabeshima 2024, "Matryoshka Sparse Autoencoders").

The latents are ordered and cut into nested prefixes ``m_1 < m_2 < ... < m_n = d_dict``
(option ``prefixes``). One BatchTopK code ``f`` (the batch's top ``n*k`` activations, as in
``batchtopk``) is computed for the whole dictionary, and every prefix must reconstruct the input
on its own:

    L = sum_j FVU(x, b_dec + sum_{i < m_j} f_i W_dec,i)  +  aux_coef * AuxK

(the paper's sum of per-prefix reconstruction errors; each term normalised as ``topk``'s FVU).
Early latents therefore learn general features that the later ones refine, instead of being
absorbed into more specific latents. Everything else is ``batchtopk``'s: AuxK on dead latents,
unit-norm decoder rows, the learned inference threshold (so the saved dictionary is used and
exported exactly like a BatchTopK one; the prefix sizes are kept with it).
"""

from __future__ import annotations

from typing import Any, ClassVar

from .options import MatryoshkaOptions, resolve_prefixes
from .trainers import BatchTopKTrainer


class MatryoshkaTrainer(BatchTopKTrainer):
    """Matryoshka BatchTopK SAE: nested prefixes of the latents each reconstruct the input."""

    name = "matryoshka"
    description = "Matryoshka BatchTopK SAE: nested latent prefixes each reconstruct the input (Bussmann et al. 2025, Nabeshima 2024)"
    Options = MatryoshkaOptions
    formats: ClassVar[tuple[str, ...]] = ("saelens",)

    @classmethod
    def dictionary_class(cls) -> type:
        from ._models import MatryoshkaSAE

        return MatryoshkaSAE

    def build(self, d_in: int) -> Any:
        d_dict = self.d_dict_for(d_in)
        return self.dictionary_class()(d_in, d_dict, self.options.k, resolve_prefixes(self.options.prefixes, d_dict))

    def _reconstruction_loss(self, dictionary: Any, values, indices, x, total_variance):
        """Sum over prefixes of the FVU of the code restricted to that prefix (one fused sparse
        decode per prefix; latents outside it contribute 0 and get no gradient from it)."""
        import torch

        loss = None
        metrics: dict[str, Any] = {}
        for size in dictionary.prefixes:
            masked = values if size >= dictionary.d_dict else torch.where(indices < size, values, 0.0)
            fvu, x_hat = self._reconstruction(dictionary, masked, indices, dictionary.b_dec, x, total_variance)
            loss = fvu if loss is None else loss + fvu
            metrics[f"fvu_prefix_{size}"] = fvu.detach()
        metrics["fvu_train"] = metrics[f"fvu_prefix_{dictionary.d_dict}"]
        return loss, metrics, x_hat


TRAINERS = (MatryoshkaTrainer,)
