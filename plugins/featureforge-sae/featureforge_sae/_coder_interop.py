"""Export and import of transcoders in SAELens' and sparsify's transcoder layouts.

The weights are written in original units (every scale folded, ``Transcoder.fold_input_scale``),
so the peer library's own forward gives featureforge's codes and target estimates. Layouts,
checked against the libraries' code (SAELens 6.54 ``saes/transcoder.py``, sparsify 1.3
``sparse_coder.py``):

* SAELens: ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``, and
  for skip transcoders ``W_skip [d_out, d_in]``; ``cfg.json`` has ``d_out``,
  ``apply_b_dec_to_input: false`` (SAELens refuses anything else for transcoders) and the
  target hook as ``metadata.hook_name_out``. SAELens transcoders are ReLU or JumpReLU
  (``jumprelu_transcoder`` / ``jumprelu_skip_transcoder``: ``relu(pre) * 1[pre > threshold]``).
  A BatchTopK transcoder is exactly that at inference with every threshold the learned one (as
  for the autoencoders in ``_interop``); a JumpReLU one exports its per-latent thresholds. SAELens
  has no TopK transcoder, so ``activation=topk`` exports to sparsify only.
* sparsify (``transcode: true``, ``skip_connection`` for ``W_skip [d_in, d_in]``): sparsify's
  names (``encoder.weight [k, d_in]``, ``W_dec``, ``b_dec``), TopK only, and the output as wide
  as the input (its decoder is ``[num_latents, d_in]``).

Import reads both back: a SAELens ReLU transcoder becomes a JumpReLU one whose thresholds are
the smallest positive float (``pre * 1[pre > tiny]`` is ReLU but for pre-activations in (0, tiny]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featureforge import BadInputError, OptionError
from featureforge.dictionary import write_json

from ._interop import (SAELENS_CFG, SAELENS_FORMAT_VERSION, SAELENS_WEIGHTS, SPARSIFY_CFG, SPARSIFY_WEIGHTS,
                       _base_options, _first, _int_field, _provenance, _read_cfg, _read_weights, _save_safetensors, built_with)

#: SAELens architecture of a transcoder: (thresholded, skip) -> name.
SAELENS_TRANSCODERS = {(False, False): "transcoder", (False, True): "skip_transcoder",
                       (True, False): "jumprelu_transcoder", (True, True): "jumprelu_skip_transcoder"}


def _weights(dictionary: Any) -> dict[str, torch.Tensor]:
    state = dictionary.fold_input_scale()
    return {k: v.float().cpu().contiguous() for k, v in state.items()}


def _block(trainer: Any, dictionary: Any) -> dict[str, Any]:
    cfg = getattr(dictionary, "config", {}) or {}
    return {"trainer": trainer.name, "dictionary": type(dictionary).__name__, "options": trainer.options_dict(),
            "trainer_version": cfg.get("trainer_version"), "store": (cfg.get("store") or {}).get("url")}


def _hooks(trainer: Any, dictionary: Any) -> tuple[Any, Any]:
    """(source hook, target hook): the sites the run mapped, else the store's recorded hook."""
    prov = _provenance(dictionary)
    hook = _first(prov, "hook_name", "hook_point", "hook")
    return trainer.options.source or hook, trainer.options.target or None


def export_transcoder(trainer: Any, dictionary: Any, fmt: str, out_dir: Path) -> Path:
    """Write a ``Transcoder`` into ``out_dir`` in layout ``fmt`` (saelens or sparsify)."""
    if fmt not in trainer.formats:
        raise OptionError(f"trainer {trainer.name!r} cannot export to {fmt!r}; it supports: {', '.join(trainer.formats)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return (_export_saelens if fmt == "saelens" else _export_sparsify)(trainer, dictionary, out_dir)


def _export_saelens(trainer: Any, d: Any, out_dir: Path) -> Path:
    if d.activation == "topk":
        raise OptionError("SAELens has no TopK transcoder; export this one with --format sparsify, "
                          "or train with -o activation=batchtopk or jumprelu for SAELens")
    w = _weights(d)
    tensors = {"W_enc": w["encoder.weight"].t().contiguous(), "b_enc": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if d.activation == "batchtopk":
        tensors["threshold"] = torch.full((d.d_dict,), max(float(d.threshold), 0.0))
    else:
        tensors["threshold"] = d.jump_threshold().detach().float().cpu().contiguous()
    if d.skip:
        tensors["W_skip"] = w["W_skip"]
    prov = _provenance(d)
    hook_in, hook_out = _hooks(trainer, d)
    cfg = {
        "d_in": d.d_in, "d_sae": d.d_dict, "d_out": d.d_out, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "architecture": SAELENS_TRANSCODERS[(True, d.skip)],
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                     "model_name": _first(prov, "model_name", "model"), "hook_name": hook_in, "hook_name_out": hook_out,
                     "hook_head_index": None, "hook_head_index_out": None, "context_size": _first(prov, "context_size"),
                     "featureforge": _block(trainer, d)},
    }
    _save_safetensors(out_dir / SAELENS_WEIGHTS, tensors)
    write_json(out_dir / SAELENS_CFG, cfg)
    return out_dir


def _export_sparsify(trainer: Any, d: Any, out_dir: Path) -> Path:
    if d.activation != "topk":
        raise OptionError(f"sparsify's transcoders are TopK; this one is {d.activation}: export it with --format saelens")
    if d.d_out != d.d_in:
        raise OptionError(f"sparsify's transcoders write as many dimensions as they read; this one maps {d.d_in} -> {d.d_out}: export it with --format saelens")
    w = _weights(d)
    tensors = {"encoder.weight": w["encoder.weight"], "encoder.bias": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if d.skip:
        tensors["W_skip"] = w["W_skip"]
    cfg = {"activation": "topk", "expansion_factor": max(1, d.d_dict // d.d_in),
           # sparsify renormalises decoder rows when this is set; featureforge's transcoder rows are free.
           "normalize_decoder": False, "num_latents": d.d_dict, "k": int(d.k), "multi_topk": False,
           "skip_connection": bool(d.skip), "transcode": True, "d_in": d.d_in, "featureforge": _block(trainer, d)}
    _save_safetensors(out_dir / SPARSIFY_WEIGHTS, tensors)
    write_json(out_dir / SPARSIFY_CFG, cfg)
    return out_dir


# -- import ----------------------------------------------------------------------------------
def import_transcoder(trainer_cls: Any, src_dir: Path, fmt: str):
    """(options, Transcoder) if ``src_dir`` holds a transcoder in layout ``fmt``, else None."""
    if fmt == "saelens":
        return _import_saelens(trainer_cls, src_dir)
    if fmt == "sparsify":
        return _import_sparsify(trainer_cls, src_dir)
    return None


def _make(trainer_cls: Any, options: dict[str, Any], d_in: int, t: dict[str, torch.Tensor], cfg_path: Path) -> tuple[dict[str, Any], Any]:
    trainer, d = built_with(trainer_cls, options, d_in, t, cfg_path)
    with torch.no_grad():
        if d.skip:
            d.W_skip.copy_(t["W_skip"])
        if d.activation == "jumprelu":
            d.log_threshold.copy_(t["threshold"].clamp_min(torch.finfo(torch.float32).tiny).log())
        elif d.activation == "batchtopk":
            d.threshold.fill_(max(float(t["threshold"][0]), 0.0))
    d.eval()
    return trainer.options_dict(), d


def _options(trainer_cls: Any, block: Any, **fixed: Any) -> dict[str, Any]:
    options = _base_options(trainer_cls, block)
    options.pop("expansion_factor", None)
    options.update(fixed)
    if options.get("k", 32) >= options["d_dict"]:
        options["k"] = max(1, options["d_dict"] - 1)  # k matters only for training a threshold transcoder
    return options


def _import_saelens(trainer_cls: Any, src_dir: Path):
    cfg_path = src_dir / SAELENS_CFG
    cfg = _read_cfg(cfg_path)
    arch = cfg.get("architecture")
    if arch not in SAELENS_TRANSCODERS.values():
        return None
    thresholded = arch.startswith("jumprelu")
    skip = "skip" in arch
    d_in, d_sae, d_out = (_int_field(cfg, key, cfg_path) for key in ("d_in", "d_sae", "d_out"))
    if cfg.get("normalize_activations", "none") not in (None, "none"):
        raise BadInputError(f"{cfg_path} normalises activations at run time ({cfg['normalize_activations']!r}), which featureforge cannot reproduce; fold it into the weights first")
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if thresholded:
        expected["threshold"] = (d_sae,)
    if skip:
        expected["W_skip"] = (d_out, d_in)
    t = _read_weights(src_dir / SAELENS_WEIGHTS, expected)
    t["W_enc"] = t["W_enc"].t().contiguous()
    if not thresholded:  # ReLU: the smallest positive threshold (see the module docstring)
        t["threshold"] = torch.zeros(d_sae)
    theta = t["threshold"]
    shared = thresholded and bool(torch.allclose(theta, theta[0].expand_as(theta), rtol=1e-6, atol=0))
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    block = meta.get("featureforge")
    recorded = (block or {}).get("options", {}).get("activation") if isinstance(block, dict) else None
    activation = "batchtopk" if shared and recorded != "jumprelu" else "jumprelu"
    fixed: dict[str, Any] = {"d_dict": d_sae, "d_target": d_out, "activation": activation, "skip": skip}
    for key, value in (("source", meta.get("hook_name")), ("target", meta.get("hook_name_out"))):
        if isinstance(value, str) and value:
            fixed.setdefault(key, value)
    options = _options(trainer_cls, block, **fixed)
    if options.get("source") == options.get("target"):
        options.pop("target", None)
    return _make(trainer_cls, options, d_in, t, cfg_path)


def _import_sparsify(trainer_cls: Any, src_dir: Path):
    cfg_path = src_dir / SPARSIFY_CFG
    cfg = _read_cfg(cfg_path)
    if not cfg.get("transcode"):
        return None
    if cfg.get("activation", "topk") != "topk":
        raise BadInputError(f"{cfg_path} uses activation {cfg.get('activation')!r}; featureforge imports sparsify's topk transcoders only")
    d_in = _int_field(cfg, "d_in", cfg_path)
    d_sae = int(cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))
    k = _int_field(cfg, "k", cfg_path)
    if k >= d_sae:
        raise BadInputError(f"{cfg_path}: k={k} is not smaller than the {d_sae} latents; the config is inconsistent")
    skip = bool(cfg.get("skip_connection"))
    expected = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if skip:
        expected["W_skip"] = (d_in, d_in)
    t = _read_weights(src_dir / SPARSIFY_WEIGHTS, expected)
    t = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"], **({"W_skip": t["W_skip"]} if skip else {})}
    options = _options(trainer_cls, cfg.get("featureforge"), d_dict=d_sae, k=k, d_target=d_in, activation="topk", skip=skip)
    return _make(trainer_cls, options, d_in, t, cfg_path)
