"""Embeddings of examples by the live model: a later layer at the activating token, or a pooled one.

The default facets cluster the stored activation vectors themselves. With ``-o embed=layer:N``
each example's context is run through the source's model and its hidden state N at the
activating token is used; ``-o embed=pooled`` uses the mean of the last hidden state over the
context (a sentence embedding for encoders such as MiniLM). Needs a source that exposes its model
(``hf``: ``source.loaded``) and stores with token ids.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from featureforge import BadInputError, OptionError

BATCH = 32


def parse_embed(text: str) -> tuple[str, int | None]:
    if text in ("acts", "pooled"):
        return text, None
    if text.startswith("layer:") and text[6:].lstrip("-").isdigit():
        return "layer", int(text[6:])
    raise OptionError(f"facets: embed={text!r} is not acts, pooled or layer:N; write e.g. -o embed=layer:5")


def live_embedder(source: Any, text: str) -> Callable[[Sequence[dict[str, Any]]], np.ndarray] | None:
    """A function from examples (``token_ids``, ``index``) to embeddings, or None for ``acts``."""
    mode, layer = parse_embed(text)
    if mode == "acts":
        return None
    try:
        loaded = getattr(source, "loaded", None)
    except Exception as exc:  # the source's model failed to load here
        raise BadInputError(f"-o embed={text} needs the live model, which did not load: {exc}; use -o embed=acts") from None
    if loaded is None or not hasattr(loaded, "model"):
        raise BadInputError(f"-o embed={text} needs a live model source such as hf; this store's source has none; use -o embed=acts")

    @torch.no_grad()
    def embed(examples: Sequence[dict[str, Any]]) -> np.ndarray:
        prefix, suffix = list(loaded.prefix), list(loaded.suffix)
        out = []
        for start in range(0, len(examples), BATCH):
            part = examples[start : start + BATCH]
            seqs = [prefix + list(ex["token_ids"]) + suffix for ex in part]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), int(loaded.pad_id), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
            hidden = loaded.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device), output_hidden_states=True).hidden_states
            if mode == "pooled":
                m = mask.to(hidden[-1].device, hidden[-1].dtype)[..., None]
                out.append(((hidden[-1] * m).sum(1) / m.sum(1)).float().cpu())
            else:
                if not -len(hidden) <= layer < len(hidden):
                    raise BadInputError(f"-o embed=layer:{layer} is out of range: the model has hidden states 0..{len(hidden) - 1}")
                at = torch.tensor([len(prefix) + int(ex["index"]) for ex in part])
                out.append(hidden[layer][torch.arange(len(part)), at.to(hidden[layer].device)].float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    return embed
