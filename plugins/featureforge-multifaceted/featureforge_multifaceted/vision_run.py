"""``featureforge facets-vision``: facets and synthetic images of a unit of a model given as code + weights.

A model is named as ``package.module:callable`` (called with no arguments, it returns the
``nn.Module``) and optionally a ``.safetensors`` file of its state dict: code and tensors, never a
pickle. Images come from a folder (unreadable files are skipped and counted).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from featureforge import BadInputError


def build_model(spec: str, weights: str | None) -> Any:
    """The ``nn.Module`` made by ``module:callable``, with ``weights`` (safetensors) loaded if given."""
    import torch

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadInputError(f"--model {spec!r} is not MODULE:CALLABLE; write e.g. --model featureforge_multifaceted.digits:SmallCNN")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BadInputError(f"--model {spec!r} cannot be imported ({exc}); install the package that defines it") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise BadInputError(f"--model {spec!r} returned a {type(model).__name__}, not a torch nn.Module")
    if weights:
        from safetensors.torch import load_file

        path = Path(weights)
        if not path.is_file():
            raise BadInputError(f"--weights {weights} is not a file; pass a .safetensors state dict")
        missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
        if missing or unexpected:
            raise BadInputError(f"--weights {weights} does not fit {spec}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return model.eval()


def facets_vision(model: str, weights: str | None, images: str, size: tuple[int, int], mode: str, layer: str, unit: int,
                  embed_layer: str, out: str, top_n: int = 64, steps: int = 20) -> dict[str, Any]:
    """Run facet synthesis and write ``facets.png`` and ``facets.json`` into ``out``."""
    from .synthesis import SynthesisSettings
    from .vision import Unit, facet_synthesis, load_image_folder, save_grid

    net = build_model(model, weights)
    batch, names, skipped = load_image_folder(images, size, mode)
    result = facet_synthesis(net, batch, Unit(layer, unit), embed_layer, top_n=top_n, synthesis=SynthesisSettings(steps=steps))
    folder = Path(out)
    grid = save_grid(result, batch, folder / "facets.png")
    summary = result.summary() | {
        "images": len(names), "skipped_unreadable": skipped, "unit": {"layer": layer, "index": unit}, "embed_layer": embed_layer,
        "facet_images": [[names[int(i)] for i in result.top_indices[result.labels == f]] for f in range(len(result.prototypes))],
        "grid": str(grid),
    }
    (folder / "facets.json").write_text(json.dumps(summary, indent=2))
    return summary
