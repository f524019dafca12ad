"""Facets of a unit of a torch image model, and one synthetic image per facet.

Following Nguyen, Yosinski & Clune 2016 (arXiv 1602.03616): collect the unit's top images,
embed them at a later layer (e.g. the penultimate one), PCA + k-means into facets, then for each
facet start activation maximisation from the mean of its prototype images (the image nearest the
centroid and its 15 nearest neighbours) — see ``synthesis.py``. A unit is a channel of a conv
layer (its spatial mean), a neuron of a flat layer, or a dictionary latent over a layer's
activations (conv maps are pooled spatially before encoding).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from featureforge import BadInputError
from featureforge.sites import HookSite

from .facets import FacetSettings, find_facets
from .synthesis import SynthesisSettings, synthesise

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclasses.dataclass
class Unit:
    """A unit: ``index`` of the output of module ``layer`` (or of ``dictionary``'s latents over it)."""

    layer: str
    index: int
    dictionary: Any = None


@contextlib.contextmanager
def _capture(model: torch.nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Outputs of the named modules during forward passes, kept with their graphs."""
    seen: dict[str, torch.Tensor] = {}
    sites = [HookSite.find(model, n, error=BadInputError, fix="pick a layer by its name") for n in names]

    def keeper(name: str) -> Any:
        def keep(x: torch.Tensor) -> None:
            seen[name] = x

        return keep

    handles = [site.attach(keeper(n)) for n, site in zip(names, sites)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _unit_values(out: torch.Tensor, unit: Unit) -> torch.Tensor:
    flat = out.mean(dim=(2, 3)) if out.ndim == 4 else out.flatten(1)
    width = unit.dictionary.d_dict if unit.dictionary is not None else flat.shape[1]
    if not 0 <= unit.index < width:
        what = "latents in the dictionary" if unit.dictionary is not None else f"units in {unit.layer!r}"
        raise BadInputError(f"unit index {unit.index} is out of range: there are {width} {what}; pick 0..{width - 1}")
    if unit.dictionary is not None:
        return unit.dictionary.encode(flat)[:, unit.index]
    return flat[:, unit.index]


def unit_function(model: torch.nn.Module, unit: Unit):
    """images [n, C, H, W] -> the unit's activation [n] (differentiable)."""

    def activation(images: torch.Tensor) -> torch.Tensor:
        with _capture(model, [unit.layer]) as seen:
            model(images)
        return _unit_values(seen[unit.layer], unit)

    return activation


@torch.no_grad()
def top_images(model: torch.nn.Module, images: torch.Tensor, unit: Unit, embed_layer: str, top_n: int = 64,
               batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, activations, embeddings) of the ``top_n`` images that activate ``unit`` most."""
    images = as_images(images)
    model.eval()
    acts, embeds = [], []
    for start in range(0, len(images), batch):
        with _capture(model, [unit.layer, embed_layer]) as seen:
            model(images[start : start + batch])
        acts.append(_unit_values(seen[unit.layer], unit).float())
        e = seen[embed_layer]
        embeds.append((e.mean(dim=(2, 3)) if e.ndim == 4 else e.flatten(1)).float())
    a = torch.cat(acts)
    top = a.topk(min(top_n, a.numel()))
    return top.indices.numpy(), top.values.numpy(), torch.cat(embeds)[top.indices].numpy()


def as_images(data: Any) -> torch.Tensor:
    """Images [n, C, H, W] from a tensor, or from a dataset whose items are images or (image, ...) tuples."""
    if isinstance(data, torch.Tensor):
        images = data
    else:
        items = [data[i] for i in range(len(data))]
        images = torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])
    if images.ndim != 4:
        raise BadInputError(f"images have shape {tuple(images.shape)}, not [n, channels, height, width]; pass a batch of images")
    return images.float()


@dataclasses.dataclass
class VisionFacets:
    top_indices: np.ndarray
    top_activations: np.ndarray
    labels: np.ndarray
    prototypes: list[list[int]]
    synthetic: torch.Tensor
    synthetic_activations: list[float]
    best_real_activation: float
    #: Pairwise distances between synthetic facets: pixel RMS and cosine distance of embeddings.
    pixel_distances: list[list[float]]
    embedding_distances: list[list[float]]

    def summary(self) -> dict[str, Any]:
        return {"facets": len(self.prototypes), "sizes": np.bincount(self.labels).tolist(),
                "synthetic_activations": [round(v, 4) for v in self.synthetic_activations],
                "best_real_activation": round(self.best_real_activation, 4),
                "pixel_distances": self.pixel_distances, "embedding_distances": self.embedding_distances}


def facet_synthesis(model: torch.nn.Module, images: torch.Tensor, unit: Unit, embed_layer: str, *, top_n: int = 64,
                    facets: FacetSettings | None = None, synthesis: SynthesisSettings | None = None) -> VisionFacets:
    """Top images of ``unit``, their facets, and one image per facet synthesised from its prototype mean.

    ``images``: a tensor [n, C, H, W] or a dataset (e.g. ``TensorDataset``) of images or (image, label).
    """
    images = as_images(images)
    was_training = model.training
    try:
        idx, vals, emb = top_images(model, images, unit, embed_layer, top_n)  # puts the model in eval mode
        found = find_facets(emb, facets)
        fn = unit_function(model, unit)  # gradients flow to the image only (autograd.grad), never into .grad
        synthetic = torch.stack([synthesise(fn, images[idx[proto]].mean(0), synthesis) for proto in found.prototypes])
        with torch.no_grad(), _capture(model, [unit.layer, embed_layer]) as seen:
            model(synthetic)
            acts = _unit_values(seen[unit.layer], unit).tolist()
            e = seen[embed_layer]
            e = (e.mean(dim=(2, 3)) if e.ndim == 4 else e.flatten(1)).float()
    finally:
        model.train(was_training)
    k = synthetic.shape[0]
    flat = synthetic.flatten(1)
    pix = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    en = torch.nn.functional.normalize(e, dim=1)
    cos = 1 - en @ en.T
    rnd = lambda m: [[round(float(m[i, j]), 4) for j in range(k)] for i in range(k)]  # noqa: E731
    return VisionFacets(idx, vals, found.labels, found.prototypes, synthetic, [float(a) for a in acts], float(vals[0]), rnd(pix), rnd(cos))


def load_image_folder(folder: str | Path, size: tuple[int, int], mode: str = "RGB") -> tuple[torch.Tensor, list[str], int]:
    """(images [n, C, H, W] in [0, 1], their file names, files skipped as unreadable) of an image folder."""
    from PIL import Image, UnidentifiedImageError

    root = Path(folder)
    if not root.is_dir():
        raise BadInputError(f"{folder} is not a folder of images; pass a folder of .png/.jpg files")
    tensors, names, skipped = [], [], 0
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert(mode).resize((size[1], size[0])), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError):
            skipped += 1
            continue
        tensors.append(torch.from_numpy(arr.reshape(size[0], size[1], -1)).permute(2, 0, 1))
        names.append(path.name)
    if not tensors:
        raise BadInputError(f"no readable image in {folder} ({skipped} unreadable file(s) skipped); pass a folder of .png/.jpg files")
    return torch.stack(tensors), names, skipped


def save_grid(result: VisionFacets, images: torch.Tensor, path: str | Path, real_per_facet: int = 6, cell: int = 64) -> Path:
    """PNG: one row per facet, its synthetic image first (framed red), then its top real images."""
    from PIL import Image, ImageDraw

    k = result.synthetic.shape[0]
    cols = 1 + real_per_facet
    pad = 4
    canvas = Image.new("RGB", (cols * (cell + pad) + pad, k * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)

    def tile(img: torch.Tensor) -> Image.Image:
        arr = img.detach().float()
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8)
        arr = (arr.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        return pil.convert("RGB").resize((cell, cell), Image.NEAREST)

    for f in range(k):
        y = pad + f * (cell + pad)
        canvas.paste(tile(result.synthetic[f]), (pad, y))
        draw.rectangle([pad - 2, y - 2, pad + cell + 1, y + cell + 1], outline=(200, 40, 40), width=2)
        members = result.top_indices[result.labels == f][:real_per_facet]
        for j, i in enumerate(members):
            canvas.paste(tile(images[int(i)]), (pad + (j + 1) * (cell + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
