"""Export to and import from SAELens' and sparsify's folder layouts.

The exported weights work in *original* units: featureforge trains on rows multiplied by
``input_scale`` (s), and the scale is folded into the weights so that the peer library's own
``encode``/``decode`` gives exactly featureforge's codes and reconstructions:

    W_enc' = s * W_enc,   b_enc' = b_enc,   W_dec' = W_dec / s,   b_dec' = b_dec / s

(``W_enc (s x - b_dec) + b_enc == s W_enc (x - b_dec / s) + b_enc``; the codes are unchanged, so
a JumpReLU threshold carries over as it is). The configs say ``normalize_activations: "none"``.

Mappings (the faithful one for each dictionary class, checked against the libraries' code; the
class a trainer builds picks its mapping, so a new trainer whose dictionary subclasses one of
these inherits its mapping):

* ``TopKSAE`` (topk, gsae) -> SAELens ``topk`` (``apply_b_dec_to_input: true``,
  ``rescale_acts_by_decoder_norm: false``) and sparsify ``activation: "topk"``.
* ``BatchTopKSAE`` (batchtopk, matryoshka) -> SAELens ``jumprelu`` with every latent's
  threshold set to the learned one: at inference a BatchTopK SAE is ``relu(pre) * 1[pre >
  theta]``, which is exactly SAELens' JumpReLU, and SAELens itself saves its own BatchTopK and
  Matryoshka BatchTopK SAEs that way. sparsify has no threshold activation.
* ``JumpReLUSAE`` (jumprelu) -> SAELens ``jumprelu`` with its per-latent ``threshold`` tensor
  and ``apply_b_dec_to_input: false`` (the encoder sees ``x``; Rajamanoharan et al. eq. 8).
* ``ReLUSAE`` (relu) -> SAELens ``standard`` with ``apply_b_dec_to_input: false`` (the encoder
  sees ``x``, not ``x - b_dec``, as in Anthropic's update). sparsify has no ReLU-L1 coder.

The SAELens ``metadata`` carries ``model_name``, ``hook_name`` and ``context_size`` from the
store's provenance (sources record ``model_name``/``hook_name``; older stores ``model``/``hook``).

Import picks the dictionary class a folder holds (a featureforge export names it; otherwise a
``jumprelu`` file with one shared threshold is a BatchTopK SAE and one with per-latent thresholds
a JumpReLU SAE), and the trainer that builds that class reads it. Import folds the variants
that are equivalent (SAELens ``apply_b_dec_to_input``, ``rescale_acts_by_decoder_norm``) and
refuses with one line, giving the reason, what featureforge cannot reproduce (activation
normalisation done at run time, skip connections, missing or mis-shaped tensors). Transcoders are
``_coder_interop``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from featureforge import BadInputError, OptionError
from featureforge.dictionary import atomic_write, safetensors_bytes, weights_units, write_json

from ._models import BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, ReLUSAE, TopKSAE

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
#: SAELens reads configs written for its 6.x format (``metadata`` block, ``architecture``).
SAELENS_FORMAT_VERSION = "6.0.0"


# -- export ----------------------------------------------------------------------------------
def _folded(dictionary: Any) -> dict[str, torch.Tensor]:
    """Weights in original units (see module docstring), fp32, contiguous, on the CPU."""
    state = dictionary.fold_input_scale()
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"}
    return {new: state[old].float().cpu().contiguous() for new, old in names.items()}


def _provenance(dictionary: Any) -> dict[str, Any]:
    cfg = getattr(dictionary, "config", {}) or {}
    store = cfg.get("store", {}) or {}
    return dict(store.get("provenance", {}) or {})


def _first(mapping: dict[str, Any], *keys: str) -> Any:
    return next((mapping[k] for k in keys if mapping.get(k) not in (None, "")), None)


#: SAELens architecture of each dictionary class (looked up along the class's MRO).
SAELENS_ARCHITECTURE: dict[type, str] = {TopKSAE: "topk", BatchTopKSAE: "jumprelu", JumpReLUSAE: "jumprelu", ReLUSAE: "standard"}


def mapped_class(dictionary_cls: type) -> type:
    """The class in ``SAELENS_ARCHITECTURE`` whose mapping ``dictionary_cls`` uses."""
    for cls in dictionary_cls.__mro__:
        if cls in SAELENS_ARCHITECTURE:
            return cls
    raise OptionError(f"{dictionary_cls.__name__} has no SAELens mapping; its trainer must not list the saelens format")


def _recorded_class(cls: type) -> type:
    """The class an export says it holds: the dictionary's own, unless it declares that its
    exports load back as another (``exported_as``: g-SAE's are plain TopK at inference)."""
    return getattr(cls, "exported_as", None) or cls


def _centres_input(cls: type) -> bool:
    """Whether the encoder of ``cls`` sees ``x - b_dec`` (TopK family) or ``x`` itself."""
    return issubclass(cls, TopKSAE)


def _featureforge_block(trainer: Any, dictionary: Any, note: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = getattr(dictionary, "config", {}) or {}
    block = {
        "trainer": trainer.name,
        "dictionary": _recorded_class(type(dictionary)).__name__,
        "options": trainer.options_dict(),
        "input_scale_folded": weights_units(dictionary, True)["input_scale_folded"],
        "trainer_version": cfg.get("trainer_version"),
        "store": (cfg.get("store") or {}).get("url"),
    }
    if getattr(dictionary, "prefixes", None):
        block["prefixes"] = list(dictionary.prefixes)
    block.update(note or {})
    return block


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # Fixed header order (featureforge.dictionary.safetensors_bytes): equal exports are equal files.
    data = safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata or {})
    atomic_write(path, lambda p: p.write_bytes(data))


def export_dictionary(trainer: Any, dictionary: Any, fmt: str, out_dir: Path, note: dict[str, Any] | None = None) -> Path:
    """Write ``dictionary`` (built by ``trainer``) into ``out_dir`` in layout ``fmt``; ``note``
    joins the ``featureforge`` block of the config (how the trainer differs from the mapping)."""
    if fmt not in trainer.formats:
        known = ", ".join(trainer.formats) or "none"
        raise OptionError(f"trainer {trainer.name!r} cannot export to {fmt!r}; it supports: {known}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "saelens":
        return _export_saelens(trainer, dictionary, out_dir, note)
    return _export_sparsify(trainer, dictionary, out_dir, note)


def _export_saelens(trainer: Any, dictionary: Any, out_dir: Path, note: dict[str, Any] | None) -> Path:
    cls = mapped_class(type(dictionary))
    arch = SAELENS_ARCHITECTURE[cls]
    w = _folded(dictionary)
    tensors = {"W_enc": w["W_enc"].t().contiguous(), "W_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"]}
    prov = _provenance(dictionary)
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": _first(prov, "model_name", "model"),
        "hook_name": _first(prov, "hook_name", "hook_point", "hook"),
        "hook_head_index": None,
        "context_size": _first(prov, "context_size"),
        "featureforge": _featureforge_block(trainer, dictionary, note),
    }
    cfg: dict[str, Any] = {
        "d_in": dictionary.d_in,
        "d_sae": dictionary.d_dict,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": _centres_input(cls),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        "architecture": arch,
    }
    if cls is TopKSAE:
        cfg.update({"k": int(dictionary.k), "rescale_acts_by_decoder_norm": False})
    elif cls is BatchTopKSAE:
        theta = max(float(dictionary.threshold), 0.0)
        tensors["threshold"] = torch.full((dictionary.d_dict,), theta, dtype=torch.float32)
    elif cls is JumpReLUSAE:
        tensors["threshold"] = dictionary.threshold.detach().float().cpu().contiguous()
    _save_safetensors(out_dir / SAELENS_WEIGHTS, tensors)
    write_json(out_dir / SAELENS_CFG, cfg)
    return out_dir


def _export_sparsify(trainer: Any, dictionary: Any, out_dir: Path, note: dict[str, Any] | None) -> Path:
    w = _folded(dictionary)
    tensors = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    norms = w["W_dec"].norm(dim=1)
    unit = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4))
    d_in, d_dict = dictionary.d_in, dictionary.d_dict
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, d_dict // d_in),
        # True only if the exported rows really are unit norm (input_scale 1): sparsify's trainer
        # renormalises rows when this is set, which would undo the folded scale.
        "normalize_decoder": unit,
        "num_latents": d_dict,
        "k": int(dictionary.k),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
        "featureforge": _featureforge_block(trainer, dictionary, note),
    }
    _save_safetensors(out_dir / SPARSIFY_WEIGHTS, tensors)
    write_json(out_dir / SPARSIFY_CFG, cfg)
    return out_dir


# -- import ----------------------------------------------------------------------------------
def _read_cfg(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise BadInputError(f"{path.parent} has no {path.name}; pass the folder that holds the dictionary's {path.name} and weights")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc}); the export is corrupt, write it again") from None
    if not isinstance(cfg, dict):
        raise BadInputError(f"{path} holds a {type(cfg).__name__}, not a config object; the export is corrupt")
    return cfg


def _read_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise BadInputError(f"{path} is missing; the folder has a config but no weights")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BadInputError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); it is corrupt or truncated") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise BadInputError(f"{path} does not hold this layout's tensors: missing {missing or 'none'}, unexpected {extra or 'none'}; it is another architecture or a corrupt export")
    out = {}
    for key, shape in expected.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(shape):
            raise BadInputError(f"{path}: tensor {key} has shape {tuple(t.shape)} but the config implies {tuple(shape)}; config and weights do not belong together")
        if not torch.is_floating_point(t):
            raise BadInputError(f"{path}: tensor {key} has dtype {t.dtype}, not floating point; it is not a dictionary's weight")
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise BadInputError(f"{path}: tensor {key} holds NaN or Inf values; the dictionary is corrupt")
        out[key] = t
    return out


def _int_field(cfg: dict[str, Any], key: str, path: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or int(value) <= 0:
        raise BadInputError(f"{path} has no positive integer {key!r} (found {value!r}); it is not a {path.parent.name} export this trainer reads")
    return int(value)


def _base_options(trainer_cls: Any, cfg_block: Any) -> dict[str, Any]:
    """Options recorded by a featureforge export (for round trips), else the defaults."""
    if isinstance(cfg_block, dict) and cfg_block.get("trainer") == trainer_cls.name and isinstance(cfg_block.get("options"), dict):
        valid = {f for f in trainer_cls.Options.__dataclass_fields__}
        return {k: v for k, v in cfg_block["options"].items() if k in valid}
    return {}


def built_with(trainer_cls: Any, options: dict[str, Any], d_in: int, weights: dict[str, torch.Tensor], cfg_path: Path) -> tuple[Any, Any]:
    """(trainer, dictionary) of ``trainer_cls`` built for ``d_in`` with the linear tensors of
    ``weights`` (``W_enc [d_dict, d_in]``, ``b_enc``, ``W_dec``, ``b_dec``) copied in and every
    scale 1 (imported weights are in original units); a bad option fails naming the file."""
    try:
        trainer = trainer_cls(options)
        dictionary = trainer.build(d_in)
    except OptionError as exc:
        raise BadInputError(f"{cfg_path}: {exc}") from None
    with torch.no_grad():
        dictionary.encoder.weight.copy_(weights["W_enc"])
        dictionary.encoder.bias.copy_(weights["b_enc"])
        dictionary.W_dec.copy_(weights["W_dec"])
        dictionary.b_dec.copy_(weights["b_dec"])
        dictionary.input_scale.fill_(1.0)
    return trainer, dictionary


def _make(trainer_cls: Any, options: dict[str, Any], d_in: int, weights: dict[str, torch.Tensor], cfg_path: Path,
          threshold: torch.Tensor | None = None):
    """(options, dictionary) of ``trainer_cls`` holding ``weights`` (original units: input_scale 1)."""
    trainer, dictionary = built_with(trainer_cls, options, d_in, weights, cfg_path)
    with torch.no_grad():
        if isinstance(dictionary, JumpReLUSAE):
            # theta <= 0 fires wherever relu(pre) > 0 (SAELens: relu(pre) * 1[pre > theta]): the smallest positive theta does the same.
            dictionary.log_threshold.copy_(threshold.clamp_min(torch.finfo(torch.float32).tiny).log())
        elif threshold is not None:
            dictionary.threshold.fill_(max(float(threshold[0]), 0.0))
    dictionary.eval()
    return trainer.options_dict(), dictionary


def import_dictionary(trainer_cls: Any, src_dir: Path, fmt: str):
    """(options, dictionary) if ``src_dir`` holds the kind of dictionary ``trainer_cls`` builds, else None."""
    if fmt == "saelens":
        return _import_saelens(trainer_cls, src_dir)
    if fmt == "sparsify":
        return _import_sparsify(trainer_cls, src_dir)
    return None


def _known_classes() -> dict[str, type]:
    return {c.__name__: c for c in (*SAELENS_ARCHITECTURE, MatryoshkaSAE)}


def _held_class(arch: str, block: Any, threshold: torch.Tensor | None) -> type:
    """The dictionary class a SAELens folder of architecture ``arch`` holds."""
    recorded = _known_classes().get(block.get("dictionary")) if isinstance(block, dict) else None
    if recorded is not None and SAELENS_ARCHITECTURE[mapped_class(recorded)] == arch:
        return recorded
    if arch == "jumprelu":
        shared = threshold is not None and bool(torch.allclose(threshold, threshold[0].expand_as(threshold), rtol=1e-6, atol=0))
        return BatchTopKSAE if shared else JumpReLUSAE
    return TopKSAE if arch == "topk" else ReLUSAE


def _import_saelens(trainer_cls: Any, src_dir: Path):
    own = trainer_cls.dictionary_class()
    cfg_path = src_dir / SAELENS_CFG
    cfg = _read_cfg(cfg_path)
    arch = cfg.get("architecture", "standard")
    if SAELENS_ARCHITECTURE[mapped_class(own)] != arch:
        return None
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    block = meta.get("featureforge")
    d_in, d_sae = _int_field(cfg, "d_in", cfg_path), _int_field(cfg, "d_sae", cfg_path)
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise BadInputError(f"{cfg_path} normalises activations at run time ({norm!r}), which featureforge cannot reproduce; fold the normalisation into the weights first")
    if cfg.get("reshape_activations", "none") not in (None, "none"):
        raise BadInputError(f"{cfg_path} reshapes activations ({cfg['reshape_activations']!r}); featureforge imports only flat [n, d_in] dictionaries")
    if cfg.get("finetuning_scaling_factor"):
        raise BadInputError(f"{cfg_path} uses a fine-tuning scaling factor; fold it into W_dec before importing")
    if cfg.get("rescale_acts_by_decoder_norm") and arch != "topk":
        raise BadInputError(f"{cfg_path} rescales {arch} activations by the decoder norms, which featureforge reproduces for topk only; fold the norms into W_enc, b_enc and W_dec first")
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if arch == "jumprelu":
        expected["threshold"] = (d_sae,)
    t = _read_weights(src_dir / SAELENS_WEIGHTS, expected)
    held = _held_class(arch, block, t.get("threshold"))
    if held is not own:
        return None  # another trainer of this plugin builds what the folder holds
    W_enc = t["W_enc"].t().contiguous()
    b_enc, W_dec, b_dec = t["b_enc"], t["W_dec"], t["b_dec"]
    centre = bool(cfg.get("apply_b_dec_to_input", True))
    if centre and not _centres_input(own):  # W (x - b_dec) + b_enc == W x + (b_enc - W b_dec)
        b_enc = b_enc - W_enc @ b_dec
    elif not centre and _centres_input(own):  # W x + b_enc == W (x - b_dec) + (b_enc + W b_dec)
        b_enc = b_enc + W_enc @ b_dec
    options = _base_options(trainer_cls, block)
    options.pop("expansion_factor", None)
    options["d_dict"] = d_sae
    if arch == "topk":
        options["k"] = _int_field(cfg, "k", cfg_path)
        if cfg.get("rescale_acts_by_decoder_norm"):
            # topk(pre * |W_dec,i|) with codes / |W_dec,i| decoded == scaling the encoder rows.
            norms = W_dec.norm(dim=1).clamp_min(1e-8)
            W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    elif issubclass(own, BatchTopKSAE):
        theta = t["threshold"]
        if not bool(torch.allclose(theta, theta[0].expand_as(theta), rtol=1e-6, atol=0)):
            raise BadInputError(f"{cfg_path} says it holds a {own.__name__} but its latents have different thresholds; the export is corrupt")
        k = int(options.get("k", 32))
        options["k"] = min(k, d_sae - 1) if d_sae > 1 else 1  # k only matters for training
    if "k" in options and options["k"] >= d_sae:
        raise BadInputError(f"{cfg_path}: k={options['k']} is not smaller than d_sae={d_sae}; the config is inconsistent")
    return _make(trainer_cls, options, d_in, {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, cfg_path, t.get("threshold"))


def _import_sparsify(trainer_cls: Any, src_dir: Path):
    if trainer_cls.dictionary_class() is not TopKSAE:
        return None
    cfg_path = src_dir / SPARSIFY_CFG
    cfg = _read_cfg(cfg_path)
    if cfg.get("activation", "topk") != "topk":
        raise BadInputError(f"{cfg_path} uses activation {cfg.get('activation')!r}; featureforge imports sparsify's topk coders only")
    if cfg.get("transcode"):
        return None  # the transcoder trainer reads sparsify's transcoders (_coder_interop)
    if cfg.get("skip_connection"):
        raise BadInputError(f"{cfg_path} is an autoencoder with a skip connection; featureforge imports plain sparsify autoencoders and transcoders only")
    d_in = _int_field(cfg, "d_in", cfg_path)
    num_latents = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32))
    d_sae = int(num_latents)
    k = _int_field(cfg, "k", cfg_path)
    if k >= d_sae:
        raise BadInputError(f"{cfg_path}: k={k} is not smaller than the {d_sae} latents; the config is inconsistent")
    expected = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    t = _read_weights(src_dir / SPARSIFY_WEIGHTS, expected)
    options = _base_options(trainer_cls, cfg.get("featureforge"))
    options.pop("expansion_factor", None)
    options.update({"d_dict": d_sae, "k": k})
    return _make(trainer_cls, options, d_in, {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}, cfg_path)
