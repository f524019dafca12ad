"""Output-token effects of dictionary latents: decoder direction times the model's unembedding.

For a latent with decoder row ``w`` written into the residual stream, ``w @ W_U.T`` is its direct
effect on each output logit (the path through the unembedding only: later layers and the final
norm are ignored). It exists only when the live source exposes a model with an output embedding
whose width is the dictionary's ``d_in``; otherwise ``unembedding`` says why not.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def unembedding(source: Any, d_in: int) -> tuple[torch.Tensor | None, str]:
    """(W_U [vocab, d_in] or None, a note saying where it came from or why there is none)."""
    if source is None:
        return None, "no live source: output-token effects need the model"
    try:
        model = getattr(getattr(source, "loaded", None), "model", None)  # hf sources load their model here
    except Exception:  # a model that cannot load on this machine
        model = None
    if model is None or not hasattr(model, "get_output_embeddings"):
        return None, f"source {getattr(source, 'name', '?')!r} exposes no model with an unembedding"
    out = model.get_output_embeddings()
    if out is None:
        return None, f"{type(model).__name__} has no output embedding (not a language-model head)"
    weight = out.weight.detach().float().cpu()
    if weight.shape[1] != d_in:
        return None, f"unembedding width {weight.shape[1]} differs from d_in={d_in}; effects are defined at the residual stream only"
    return weight, f"direct path W_dec @ W_U^T through {type(model).__name__}.get_output_embeddings()"


def token_effects(decoder: torch.Tensor, w_u: torch.Tensor, latents: Sequence[int], decode: Callable[[list[int]], list[str]],
                  top: int = 10) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Per latent, the ``top`` most promoted and most suppressed output tokens with their logit effect."""
    out = {}
    for start in range(0, len(latents), 1024):
        part = list(latents[start : start + 1024])
        logits = decoder[part].float().cpu() @ w_u.T
        hi, lo = logits.topk(top, dim=1), (-logits).topk(top, dim=1)
        for j, lat in enumerate(part):
            out[int(lat)] = {
                "promoted": [{"token": t, "effect": round(float(v), 4)} for t, v in zip(decode(hi.indices[j].tolist()), hi.values[j])],
                "suppressed": [{"token": t, "effect": round(-float(v), 4)} for t, v in zip(decode(lo.indices[j].tolist()), lo.values[j])],
            }
    return out
