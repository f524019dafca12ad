"""Where a latent reads and writes, for dictionaries of several sites (issue #23): the "Sites"
section of feature pages and the decoder rows the output-token effects use.

A transcoder's latent is read at its source site (an MLP's input) and written at its target (the
MLP's output), so its page names both and its output-token effects use its decoder row, which lives
in the target site. A crosscoder's latent writes every site: its page shows each site's share of the
decoder norm (|d_i^s| / Σ_s |d_i^s|, raw units: the split that tells a layer-specific feature from
a cross-layer one, Lindsey et al. 2024) and its effects use the last site's row (the one nearest
the output). Norms are of ``decode(e_i) - decode(0)``, so any normalisation is accounted for.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


def decoder_rows(dictionary: Any, latents: Sequence[int]) -> torch.Tensor:
    """Raw-unit decoder rows of ``latents``: ``[k, d]`` (a transcoder's in its target), ``[k, S, d]`` (a crosscoder's)."""
    device = next(iter(dictionary.parameters()), torch.zeros(())).device
    with torch.no_grad():
        eye = torch.zeros(len(latents), int(dictionary.d_dict), device=device)
        eye[torch.arange(len(latents)), torch.as_tensor(list(latents), dtype=torch.long)] = 1.0
        return (dictionary.decode(eye) - dictionary.decode(torch.zeros_like(eye[:1]))).float().cpu()


def output_rows(dictionary: Any, roles: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    """(decoder rows [d_dict, d] the output-token effects use, which site they are in ("" for one site))."""
    directions = dictionary.decoder_directions.detach()
    if roles.get("sites"):
        return directions.reshape(int(dictionary.d_dict), len(roles["sites"]), -1)[:, -1], str(list(roles["sites"])[-1])
    return directions, str(roles.get("target") or "")


def site_sections(dictionary: Any, roles: Mapping[str, Any], latents: Sequence[int], block: int = 1024) -> dict[int, dict[str, Any]]:
    """latent -> ``{"reads": [site, ...], "writes": [{"site", "norm", "share"}, ...]}``; empty for a one-site dictionary."""
    if roles.get("sites"):
        reads = writes = [str(s) for s in roles["sites"]]
    elif roles.get("target"):
        reads, writes = [str(roles["acts"])], [str(roles["target"])]
    else:
        return {}
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(latents), block):
        part = [int(i) for i in latents[start : start + block]]
        rows = decoder_rows(dictionary, part).reshape(len(part), len(writes), -1)
        norms = rows.norm(dim=-1)
        shares = norms / norms.sum(1, keepdim=True).clamp_min(torch.finfo(norms.dtype).tiny)
        for j, lat in enumerate(part):
            out[lat] = {"reads": reads, "writes": [{"site": s, "norm": round(float(norms[j, i]), 6), "share": round(float(shares[j, i]), 4)}
                                                   for i, s in enumerate(writes)]}
    return out
