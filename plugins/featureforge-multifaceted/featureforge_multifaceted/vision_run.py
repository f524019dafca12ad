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
        raise BadInputError(f"--model {spec!r} is not MODULE:CALLABLE; write e.g. --model mypkg.nets:make_net (a callable returning the nn.Module)")
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
                  embed_layer: str, out: str, top_n: int = 64, steps: int = 20, *, method: str = "pixel", ppgn: str | None = None,
                  dictionary: str | None = None, chains: int = 4, chain_steps: int = 200, every: int = 20, condition: str = "activation",
                  feature_layer: str | None = None, ppgn_epochs: int = 40, seed: int = 0) -> dict[str, Any]:
    """Facets of a unit and its synthetic images, written into ``out``.

    ``method``: ``pixel`` (activation maximisation per facet, Nguyen 2016: ``facets.png``), ``ppgn``
    (chains in a generator's code space, Nguyen 2016b: ``ppgn.png``) or ``both``; with ``both`` a
    ``feature.html`` page shows the two beside the unit's real top images. The PPGN parts are loaded
    from the folder ``ppgn``, or trained there first (minutes on a CPU for small images) when it has none.
    """
    from .synthesis import SynthesisSettings
    from .vision import Unit, facet_synthesis, load_image_folder, save_grid

    if method not in ("pixel", "ppgn", "both"):
        raise BadInputError(f"--method {method!r} is not one of pixel, ppgn, both")
    if method != "pixel" and not ppgn:
        raise BadInputError("--method ppgn needs --ppgn DIR: a folder holding a trained PPGN, or an empty one to train it in")
    if condition not in ("activation", "log-softmax"):
        raise BadInputError(f"--condition {condition!r} is not one of activation, log-softmax")
    net = build_model(model, weights)
    batch, names, skipped = load_image_folder(images, size, mode)
    the_unit = Unit(layer, unit, _dictionary(dictionary) if dictionary else None)
    folder = Path(out)
    summary: dict[str, Any] = {"images": len(names), "skipped_unreadable": skipped, "embed_layer": embed_layer,
                               "unit": {"layer": layer, "index": unit, "dictionary": dictionary}, "method": method}
    if method in ("pixel", "both"):
        result = facet_synthesis(net, batch, the_unit, embed_layer, top_n=top_n, synthesis=SynthesisSettings(steps=steps, seed=seed))
        grid = save_grid(result, batch, folder / "facets.png")
        summary |= result.summary() | {
            "facet_images": [[names[int(i)] for i in result.top_indices[result.labels == f]] for f in range(len(result.prototypes))],
            "grid": str(grid),
        }
    if method in ("ppgn", "both"):
        summary["ppgn"] = _ppgn_part(net, batch, the_unit, embed_layer, folder, top_n, ppgn, chains, chain_steps, every,
                                     condition == "log-softmax", feature_layer or embed_layer, ppgn_epochs, seed)
    (folder / "facets.json").write_text(json.dumps(summary, indent=2))
    if method == "both":
        from .vision_page import write_feature_page

        summary["page"] = str(write_feature_page(folder, summary))
    return summary


def _dictionary(run: str) -> Any:
    import featureforge

    if not Path(run).is_dir():
        raise BadInputError(f"--dictionary {run} is not a run folder; pass a folder written by `featureforge train`")
    return featureforge.load(run)


def _ppgn_part(net: Any, batch: Any, unit: Any, embed_layer: str, folder: Path, top_n: int, ppgn_dir: str, chains: int,
               chain_steps: int, every: int, log_softmax: bool, feature_layer: str, epochs: int, seed: int) -> dict[str, Any]:
    from .ppgn import CONFIG, PPGNSettings, load_ppgn, train_ppgn
    from .ppgn_facets import ppgn_facets, save_chain_grid
    from .ppgn_sampler import SamplerSettings

    if chain_steps < every or every < 1:
        raise BadInputError(f"--chain-steps {chain_steps} keeps no sample every {every} steps; make --chain-steps at least --every (>= 1)")
    if (Path(ppgn_dir) / CONFIG).is_file():
        model = load_ppgn(ppgn_dir)
        trained = False
    else:
        model = train_ppgn(net, batch, PPGNSettings(feature_layer=feature_layer, epochs=epochs, dae_epochs=max(epochs, 30), seed=seed),
                           low=float(batch.min()), high=float(batch.max()))
        model.save(ppgn_dir)
        trained = True
    sampler = SamplerSettings(steps=chain_steps, every=every, seed=seed)
    result = ppgn_facets(net, batch, unit, embed_layer, model, top_n=top_n, chains=chains, sampler=sampler, log_softmax=log_softmax)
    grid = save_chain_grid(result, folder / "ppgn.png")
    return result.summary() | {"grid": str(grid), "ppgn_dir": str(ppgn_dir), "trained_now": trained,
                               "dae_noised_mse": model.info.get("dae_noised_mse"), "dae_denoised_mse": model.info.get("dae_denoised_mse")}
