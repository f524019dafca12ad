"""Facets on planted truth: latents built as unions of known features, scored by adjusted Rand index.

On a ``synthetic`` store every row is a sparse sum of known feature directions. A *union latent*
``ReLU(Σ_{i∈S} f_i·x − b)`` over 2–3 true features S fires whenever any of them is present, so its
top examples come in |S| known kinds: each example is labelled by the member of S with the largest
true coefficient, and the facets found without that label are compared with it (ARI; 1 is a
perfect match, 0 is chance). Rows holding two members of S at once have no single kind; the ARI
is reported over rows with exactly one member (``ari_single``) and over rows with at least one
(``ari_all``). Top rows with no member at all (false positives of the summed direction) have no
label and are counted apart.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

import featureforge
from featureforge_multifaceted.collect import collect
from featureforge_multifaceted.facets import FacetSettings, find_facets
from featureforge_multifaceted.gather import read_rows


class UnionDictionary(torch.nn.Module):
    """A featureforge-style dictionary whose latents are given encoder rows and biases (no training)."""

    def __init__(self, encoder: np.ndarray, bias: float):
        super().__init__()
        self.d_dict, self.d_in = encoder.shape
        self.weight = torch.nn.Parameter(torch.as_tensor(encoder, dtype=torch.float32), requires_grad=False)
        self.bias = float(bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.float() @ self.weight.T - self.bias)

    @property
    def decoder_directions(self) -> torch.Tensor:
        return self.weight / self.weight.norm(dim=1, keepdim=True)


@dataclasses.dataclass
class PlantedResult:
    latent: int
    members: list[int]
    facets: int
    ari_single: float
    ari_all: float
    examples: int
    single_examples: int
    #: Top examples holding none of the members (the latent's false positives: other features
    #: with enough projection on the summed direction); they have no true label and are left out.
    no_member_examples: int = 0


def union_dictionary(features: np.ndarray, unions: Sequence[Sequence[int]], bias: float = 0.5) -> UnionDictionary:
    """One latent per union: encoder row = sum of the members' true directions."""
    enc = np.stack([features[list(u)].sum(0) for u in unions])
    return UnionDictionary(enc, bias)


def planted_ari(store: Any, unions: Sequence[Sequence[int]], *, top_n: int = 300, settings: FacetSettings | None = None,
                bias: float = 0.5) -> list[PlantedResult]:
    """ARI of facets vs. true member, per union latent, on a synthetic store."""
    from sklearn.metrics import adjusted_rand_score

    truth = store.ground_truth()
    if truth is None or "features" not in truth:
        raise featureforge.BadInputError(f"store {store.url} holds no ground truth; cache it with --source synthetic")
    source = featureforge.EvaluationContext(store, ".").source  # the store's source, rebuilt by the core
    dictionary = union_dictionary(truth["features"], unions, bias)
    found = collect(dictionary, store, top_n=top_n, sample=0)
    out = []
    for latent, members in enumerate(unions):
        _, rows = found.top(latent)
        acts = read_rows(store, rows)["acts"]
        codes = _true_codes(source, rows)[:, list(members)]
        label = codes.argmax(1)
        present = (codes > 0).sum(1)
        single, some = present == 1, present >= 1
        facets = find_facets(acts, settings)
        out.append(PlantedResult(latent, list(members), facets.k, float(adjusted_rand_score(label[single], facets.labels[single])),
                                 float(adjusted_rand_score(label[some], facets.labels[some])), len(rows), int(single.sum()),
                                 int((~some).sum())))
    return out


def _true_codes(source: Any, rows: np.ndarray, span: int = 4096) -> np.ndarray:
    """True coefficients of ``rows``, one source call per ``span`` rows (the source generates blocks)."""
    out = {}
    for block in np.unique(rows // span):
        lo = int(block) * span
        hit = rows[(rows // span) == block]
        codes = source.codes(lo, int(hit.max()) + 1)
        out.update({int(r): codes[int(r) - lo] for r in hit})
    return np.stack([out[int(r)] for r in rows])
