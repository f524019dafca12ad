"""``identity`` (alias ``neurons``): the model's own units as a dictionary, with nothing to train.

Its codes are the activation rows themselves and its decoder directions the standard basis, so a
store of MLP activations becomes a dictionary of neurons that ``featureforge compare`` matches by
the same code path as learned latents (Gurnee et al. 2024, "Universal Neurons in GPT2 Language
Models", compare neurons across models by activation correlation). ``featureforge train --trainer
identity --store S --out R`` writes the run folder at once (``trains = False``): no steps, no
checkpoint; ``featureforge.load(R)`` rebuilds it like any other run.

A unit *fires* on a row when its activation is positive (the firing count ``compare`` reports);
for ReLU-family SAE codes that is the same as non-zero.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..hookspecs import hookimpl
from ..roles import DictionaryTrainer


def _identity_dictionary(d_in: int) -> Any:
    import torch

    from ..dictionary import Dictionary

    class IdentityDictionary(Dictionary):
        """Codes = rows (training units), decode = codes: the standard basis of the site."""

        def encode_normalised(self, x: torch.Tensor) -> torch.Tensor:
            return x.float()

        def decode_normalised(self, codes: torch.Tensor) -> torch.Tensor:
            return codes.float()

        @property
        def decoder_directions(self) -> torch.Tensor:
            return torch.eye(self.d_in, device=self.input_scale.device)

        @property
        def encoder_directions(self) -> torch.Tensor:
            return torch.eye(self.d_in, device=self.input_scale.device)

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            # The units in the model's own scale: no normalisation round trip.
            self._check_width(x)
            return x.float()

        def decode(self, codes: torch.Tensor) -> torch.Tensor:
            return codes.float()

    return IdentityDictionary(d_in, d_in)


class IdentityTrainer(DictionaryTrainer):
    name = "identity"
    description = "The site's own units (neurons) as a dictionary: codes are the activations; nothing is trained."
    trains: ClassVar[bool] = False

    def build(self, d_in: int) -> Any:
        return _identity_dictionary(d_in)


class NeuronsTrainer(IdentityTrainer):
    name = "neurons"
    description = "Alias of identity: the site's neurons as a dictionary (for featureforge compare)."


@hookimpl
def featureforge_register_trainers(register):
    register(IdentityTrainer)
    register(NeuronsTrainer)
