"""Facets vs. feature splitting: do a narrow dictionary's facets line up with a wider one's latents?

A narrow dictionary trained on the same activations as a wide one tends to merge what the wide
one keeps apart (feature splitting). If facets are real, each facet of a narrow latent should
match its own latent of the wide dictionary: (a) its centroid points along that latent's decoder
direction (cosine), and (b) on the facet's examples that wide latent is the one that fires.
Different facets of one narrow latent should pick different wide latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .collect import collect
from .facets import FacetSettings, find_facets
from .gather import read_rows


def _unit(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def facet_splitting(narrow: Any, wide: Any, store: Any, *, top_n: int = 200, settings: FacetSettings | None = None) -> dict[str, Any]:
    """Per multi-facet narrow latent: each facet's best wide latent by centroid cosine and by firing."""
    found = collect(narrow, store, top_n=top_n, sample=0)
    wide_dec = _unit(wide.decoder_directions.detach().float().cpu())
    narrow_dec = _unit(narrow.decoder_directions.detach().float().cpu())
    latents, centroid_cos, fire_share, distinct, own_cos = [], [], [], [], []
    agree = 0
    facets_total = 0
    for lat in range(found.d_dict):
        _, rows = found.top(lat)
        if rows.size < 16:
            continue
        acts = read_rows(store, rows)["acts"]
        f = find_facets(acts, settings)
        if f.k < 2:
            continue
        codes = wide.encode(torch.from_numpy(acts)).float().cpu()
        cos = _unit(torch.from_numpy(f.centroids).float() - 0) @ wide_dec.T  # [k, m_wide]
        by_cos = cos.argmax(1)
        by_fire = []
        for c in range(f.k):
            members = torch.from_numpy(np.flatnonzero(f.labels == c))
            mean_code = codes[members].mean(0)
            best = int(mean_code.argmax())
            by_fire.append(best)
            fire_share.append(float((codes[members, best] > 0).float().mean()))
        agree += int(sum(int(a) == b for a, b in zip(by_cos.tolist(), by_fire)))
        facets_total += f.k
        centroid_cos.extend(cos.max(1).values.tolist())
        own_cos.append(float((narrow_dec[lat] @ wide_dec.T).max()))
        distinct.append(len(set(by_fire)) == f.k)
        latents.append({"latent": lat, "facets": f.k, "sizes": f.sizes(), "wide_by_cosine": by_cos.tolist(), "wide_by_firing": by_fire,
                        "centroid_cosine": [round(v, 4) for v in cos.max(1).values.tolist()]})
    n = len(latents)
    return {
        "narrow_latents": found.d_dict,
        "multi_facet_latents": n,
        "facets": facets_total,
        "mean_facet_centroid_cosine": round(float(np.mean(centroid_cos)), 4) if n else None,
        "mean_narrow_decoder_cosine": round(float(np.mean(own_cos)), 4) if n else None,
        "distinct_wide_latents_fraction": round(float(np.mean(distinct)), 4) if n else None,
        "mean_fire_share": round(float(np.mean(fire_share)), 4) if n else None,
        "cosine_and_firing_agree": round(agree / facets_total, 4) if facets_total else None,
        "latents": latents,
    }
