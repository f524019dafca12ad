"""PPGN samples of a unit, read against the unit's real facets.

The PPGN paper (arXiv 1612.00005, its multifaceted-visualisation experiment) gets a unit's facets
from one chain: samples kept along it drift between modes. Here each kept sample is placed in the
facet of the unit's top real images (``facets.find_facets`` over their ``embed_layer`` embeddings,
as the pixel-space method uses) whose centroid is nearest in direction, and counted as landing in
it only when it is no farther from the centroid than the facet's farthest real member, so a sample
unlike every real facet lands in none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .facets import FacetSettings, find_facets
from .ppgn import PPGN, codes
from .ppgn_sampler import Chains, SamplerSettings, condition_function, sample
from .vision import Unit, _capture, as_images, top_images, unit_function


def _unit_length(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def facet_membership(real_embeddings: np.ndarray, labels: np.ndarray, sample_embeddings: np.ndarray,
                     reach: float = 100.0) -> np.ndarray:
    """Facet each sample lands in (-1: none), by nearest unit-length centroid within the facet's reach."""
    real, samples = _unit_length(real_embeddings), _unit_length(sample_embeddings)
    k = int(labels.max()) + 1
    centroids = np.stack([real[labels == f].mean(0) for f in range(k)])
    radius = np.array([np.percentile(np.linalg.norm(real[labels == f] - centroids[f], axis=1), reach) for f in range(k)])
    dist = np.linalg.norm(samples[:, None, :] - centroids[None], axis=2)
    nearest = dist.argmin(1)
    return np.where(dist[np.arange(len(samples)), nearest] <= radius[nearest], nearest, -1)


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, layer: str) -> np.ndarray:
    with _capture(model, [layer]) as seen:
        model(images)
    e = seen[layer]
    return (e.mean(dim=(2, 3)) if e.ndim == 4 else e.flatten(1)).float().numpy()


@dataclasses.dataclass
class PPGNFacets:
    chains: Chains
    #: Float [chains, kept]: the unit's activation on each kept sample.
    activations: np.ndarray
    best_real_activation: float
    #: Int [chains, kept]: the real facet each sample lands in (-1: none).
    facet_of_sample: np.ndarray
    real_facets: int
    real_sizes: list[int]
    top_indices: np.ndarray

    def summary(self) -> dict[str, Any]:
        landed = sorted({int(f) for f in self.facet_of_sample.ravel() if f >= 0})
        flat = self.chains.flat().flatten(1)
        pix = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
        n = len(flat)
        return {"method": "ppgn", "chains": int(self.chains.samples.shape[0]), "kept_steps": self.chains.steps,
                "sample_activations": np.round(self.activations, 4).tolist(), "best_real_activation": round(self.best_real_activation, 4),
                "mean_activation_fraction": round(float(self.activations.mean() / self.best_real_activation), 4) if self.best_real_activation else None,
                "real_facets": self.real_facets, "real_sizes": self.real_sizes,
                "facet_of_sample": self.facet_of_sample.tolist(), "real_facets_reached": landed,
                "mean_pairwise_pixel_rms": round(float(pix.sum() / max(n * (n - 1), 1)), 4)}


def ppgn_facets(model: torch.nn.Module, images: Any, unit: Unit, embed_layer: str, ppgn: PPGN, *, top_n: int = 64,
                chains: int = 4, sampler: SamplerSettings | None = None, log_softmax: bool = False,
                facets: FacetSettings | None = None) -> PPGNFacets:
    """PPGN chains conditioned on ``unit`` (its activation, or ``log p(class)`` with ``log_softmax``) and where they land.

    With ``sampler.init`` 'top' the chains start from codes of the unit's top real images, with
    'data' from codes of real images drawn at random (seeded by ``sampler.seed``).
    """
    images = as_images(images)
    was_training = model.training
    try:
        idx, vals, emb = top_images(model, images, unit, embed_layer, top_n)  # eval mode
        found = find_facets(emb, facets)
        s = sampler or SamplerSettings()
        start = None
        if s.init == "top":
            start = codes(model, images[idx[np.arange(chains) % len(idx)]], ppgn.feature_layer)
        elif s.init == "data":
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(s.seed))[:chains]
            start = codes(model, images[pick], ppgn.feature_layer)
        result = sample(ppgn, condition_function(model, unit, log_softmax), chains, s, start)
        flat = result.flat()
        with torch.no_grad():
            acts = unit_function(model, unit)(flat).float().numpy().reshape(chains, -1)
        member = facet_membership(emb, found.labels, embed(model, flat, embed_layer)).reshape(chains, -1)
    finally:
        model.train(was_training)
    return PPGNFacets(result, acts, float(vals[0]), member, found.k, found.sizes(), idx)


def save_chain_grid(result: PPGNFacets, path, cell: int = 48):
    """PNG: one row per chain, its kept samples left to right (a blue frame marks a sample in no real facet)."""
    from pathlib import Path

    from PIL import Image, ImageDraw

    samples = result.chains.samples
    rows, cols = samples.shape[:2]
    pad = 4
    canvas = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        for c in range(cols):
            arr = samples[r, c].detach().float().clamp(0, 1)
            arr = (arr.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            tile = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB").resize((cell, cell), Image.NEAREST)
            x, y = pad + c * (cell + pad), pad + r * (cell + pad)
            canvas.paste(tile, (x, y))
            if result.facet_of_sample[r, c] < 0:
                draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=(40, 40, 200), width=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
