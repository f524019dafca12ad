"""Atomic training checkpoints: tensors as safetensors, cursors and counters as JSON.

A checkpoint is a folder written beside the live one and swapped in by renames, so a crash at any
moment leaves either the old or the new checkpoint whole. Adam's state is flattened to named
tensors (``<param index>.exp_avg`` ...) because optimiser state dicts are otherwise pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptStoreError

CHECKPOINT_DIR = "checkpoint"


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimiser's state into named tensors plus JSON-ready hyper-parameters."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{prefix}{index}.{key}"] = tensor.detach().clone().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix):
            continue
        index, key = name[len(prefix) :].split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write ``run_dir/checkpoint`` atomically (temp folder, then renames)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    final = run_dir / CHECKPOINT_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run_dir))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for path in (tmp / "tensors.safetensors", tmp / "state.json"):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    old = run_dir / (CHECKPOINT_DIR + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest whole checkpoint of a run, or None if it has none."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        folder = run_dir / name
        if (folder / "state.json").exists() and (folder / "tensors.safetensors").exists():
            try:
                return load_file(str(folder / "tensors.safetensors")), json.loads((folder / "state.json").read_text())
            except Exception as exc:
                raise CorruptStoreError(f"checkpoint {folder} is damaged ({type(exc).__name__}: {exc}); delete it to restart the run with --overwrite") from None
    return None


def rng_tensors() -> dict[str, torch.Tensor]:
    return {"rng.torch": torch.get_rng_state()}


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
