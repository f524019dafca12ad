"""Dictionary: the trained object. Encode rows to sparse codes and decode them back.

Subclasses (in trainer plugins) implement ``encode_normalised`` and ``decode_normalised``, which
work in *training units*: rows multiplied by ``input_scale`` (from the store's normalisation, so
the mean squared norm is d_in). ``encode``/``decode``/``forward`` take and give original units.

A dictionary is saved as ``config.json`` (what rebuilds it: trainer name and options, d_in,
d_dict, normalisation, store provenance) plus ``weights.safetensors``; ``featureforge.load``
rebuilds it through the registered trainer. Nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .errors import BadInputError, CorruptRunError
from .files import atomic_write, write_json
from .run import CONFIG_FILE, RUN_FORMAT_VERSION, WEIGHTS_FILE, RunConfig, read_config

__all__ = ["CONFIG_FILE", "RUN_FORMAT_VERSION", "WEIGHTS_FILE", "Dictionary", "ForwardOutput", "atomic_write", "load",
           "load_weights", "read_config", "safetensors_bytes", "weights_units", "write_json"]


class ForwardOutput(NamedTuple):
    """Result of ``Dictionary.forward``: reconstruction (original units) and the codes."""

    x_hat: torch.Tensor
    codes: torch.Tensor


class Dictionary(nn.Module):
    """Base of every feature dictionary; see the module docstring for the unit convention."""

    def __init__(self, d_in: int, d_dict: int):
        super().__init__()
        self.d_in = int(d_in)
        self.d_dict = int(d_dict)
        # Multiplies inputs before encoding and divides outputs after decoding.
        self.register_buffer("input_scale", torch.ones(()))
        self.config: dict[str, Any] = {}

    # -- implemented by subclasses ------------------------------------------------------------
    def encode_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes [n, d_dict] (zeros where inactive) of rows in training units."""
        raise NotImplementedError

    def decode_normalised(self, codes: torch.Tensor) -> torch.Tensor:
        """Rows in training units reconstructed from dense codes."""
        raise NotImplementedError

    @property
    def decoder_directions(self) -> torch.Tensor:
        """[d_dict, d_in] decoder rows (feature directions), used by evaluators."""
        raise NotImplementedError

    @property
    def encoder_directions(self) -> "torch.Tensor | None":
        """[d_dict, d_in] encoder rows where the encoder is linear before its nonlinearity, else None.

        ``featureforge compare`` matches encoders too (a latent is shared when both its encoder and
        its decoder match, Paulo & Belrose 2025); a dictionary without linear encoder rows keeps None.
        """
        return None

    def reconstruct_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """What the dictionary puts in place of its target for rows ``x`` (training units):
        ``decode_normalised(encode_normalised(x))``. A dictionary whose estimate is more than its
        codes decoded (a skip transcoder adds ``W_skip x``) overrides it, and so does ``forward``;
        evaluators that work in training units call this rather than decoding the codes."""
        return self.decode_normalised(self.encode_normalised(x))

    def fold_input_scale(self) -> "dict[str, torch.Tensor] | None":
        """This dictionary's tensors with ``input_scale`` folded into the weights (``input_scale`` 1),
        or None where the architecture cannot fold it. ``self`` is not changed.

        ``save`` writes the folded tensors so that ``weights.safetensors`` works on raw activations
        with the architecture's plain formula, as peer libraries' files do; a dictionary that cannot
        fold keeps ``input_scale`` in the file and ``config.json`` (``weights_units``) says so.
        """
        return None

    # -- optional capability: selecting latents with a downstream loss's gradients (g-SAE) ------
    def reconstruct_with_grads(self, x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``x_hat`` in original units with latents selected using ``grads = dL/dx`` row for row.

        Optional: a dictionary trained to select latents with gradients overrides it, which
        declares ``uses_gradients``; evaluators then also score it this way.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot select latents with gradients")

    @property
    def uses_gradients(self) -> bool:
        """Whether ``reconstruct_with_grads`` is implemented (declared by overriding it)."""
        return type(self).reconstruct_with_grads is not Dictionary.reconstruct_with_grads

    # -- original units -----------------------------------------------------------------------
    def _check_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise BadInputError(f"rows have width {x.shape[-1]} but this dictionary expects d_in={self.d_in}; use activations from the same hook point")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x)
        return self.encode_normalised(x.float() * self.input_scale)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_normalised(codes) / self.input_scale

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        codes = self.encode(x)
        return ForwardOutput(self.decode(codes), codes)

    # -- persistence --------------------------------------------------------------------------
    def save(self, run_dir: str | os.PathLike, config: "dict[str, Any] | RunConfig | None" = None) -> Path:
        """Write ``weights.safetensors`` then ``config.json`` into ``run_dir`` (atomically each)."""
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        if config is not None:
            self.config = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        folded = self.fold_input_scale()
        units = weights_units(self, folded is not None)
        self.config["weights_units"] = units
        if isinstance(config, RunConfig):  # callers write this config again later (status changes)
            config.weights_units = units
        cfg = RunConfig.from_dict({"format_version": RUN_FORMAT_VERSION, **self.config, "d_in": self.d_in, "d_dict": self.d_dict}, run / CONFIG_FILE)
        state = folded if folded is not None else self.state_dict()
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        data = safetensors_bytes(tensors, {"format": "featureforge", "trainer": str(cfg.trainer)})
        atomic_write(run / WEIGHTS_FILE, lambda p: p.write_bytes(data))
        cfg.write(run)
        return run


def weights_units(dictionary: Dictionary, folded: bool) -> dict[str, Any]:
    """``config.json``'s note on the units of ``weights.safetensors``: ``raw`` (the scale folded in)
    or ``training`` (rows must be multiplied by ``input_scale`` first, results divided by it)."""
    scale = float(dictionary.input_scale)
    if folded:
        if scale == 1.0:  # loaded from folded weights (input_scale 1): keep the scale they came from
            scale = float((dictionary.config.get("weights_units") or {}).get("input_scale_folded", 1.0))
        return {"units": "raw", "input_scale_folded": scale}
    return {"units": "training", "input_scale": scale,
            "why": f"{type(dictionary).__name__} cannot fold input_scale into its weights; encode rows * input_scale, divide outputs by it"}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on the tensors and the metadata, not on the process.

    safetensors keeps ``__metadata__`` in a hash map, so two runs writing the same dictionary give
    files that differ in the order of its keys. Its tensors come out in a fixed order, so the file
    is written without metadata and the metadata put back into the JSON header with sorted keys,
    the header padded with spaces to a multiple of 8 bytes as the format asks (data offsets count
    from the end of the header, so they stay valid).
    """
    from safetensors.torch import save

    raw = save(tensors)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(metadata.items())), **header} if metadata else header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + length :]


def load_weights(dictionary: Dictionary, path: str | os.PathLike) -> None:
    """Load safetensors weights, refusing missing, extra or mis-shaped tensors in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise CorruptRunError(f"{path} is missing; the run has no trained weights yet (train it, or --resume)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptRunError(f"{path} is not a readable safetensors file ({exc}); it is corrupt or foreign") from None
    expected = dictionary.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CorruptRunError(
            f"{path} does not match a {type(dictionary).__name__}: missing {missing or 'none'}, unexpected {extra or 'none'}; "
            "it belongs to another trainer or version"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CorruptRunError(f"{path}: tensor {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}; it belongs to another dictionary")
    dictionary.load_state_dict(tensors)


def load(run_dir: str | os.PathLike) -> Dictionary:
    """Rebuild a trained dictionary from a run folder through its registered trainer."""
    from .plugins import get_registry

    cfg = RunConfig.read(run_dir)
    trainer_cls = get_registry().get("trainer", cfg.trainer)
    trainer = trainer_cls(cfg.options)
    if cfg.role_widths:  # a run whose roles came from store sites: build sees the widths and scales it was trained with
        trainer.role_widths = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.role_widths.items()}
        trainer.role_scales = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.role_scales or {}).items()}
    dictionary = trainer.build(int(cfg.d_in))
    load_weights(dictionary, Path(run_dir) / WEIGHTS_FILE)
    dictionary.config = cfg.to_dict()
    dictionary.eval()
    return dictionary
