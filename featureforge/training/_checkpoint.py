"""Atomic training checkpoints: tensors as safetensors, cursors and counters as JSON.

A checkpoint is a folder written beside the live one and swapped in by renames, so a crash at any
moment leaves either the old or the new checkpoint whole. Adam's state is flattened to named
tensors (``<param index>.exp_avg`` ...) because optimiser state dicts are otherwise pickled.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from ..errors import CorruptRunError, FeatureforgeError
from ..files import umask_mode
from ..run import CHECKPOINT_DIR, METRICS_FILE


class DiskFullError(FeatureforgeError, OSError):
    """The disk filled up while writing a checkpoint; the previous checkpoint is kept."""


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
    """Write ``run_dir/checkpoint`` atomically (temp folder, then renames).

    A failed write removes its temporary folder and keeps the previous checkpoint; a full disk is
    reported in one line.
    """
    run_dir = Path(run_dir)
    final = run_dir / CHECKPOINT_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run_dir))
    try:
        os.chmod(tmp, umask_mode(directory=True))  # mkdtemp makes it 0700 whatever the umask
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for path in (tmp / "tensors.safetensors", tmp / "state.json"):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the checkpoint of step {state.get('step')} was not written" if state.get("step") is not None else "the checkpoint was not written"
            raise DiskFullError(
                f"disk full while writing a checkpoint into {run_dir} ({kept}; the previous one is kept); "
                "free some space, then rerun with --resume"
            ) from None
        raise
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
                raise CorruptRunError(f"checkpoint {folder} is damaged ({type(exc).__name__}: {exc}); delete it to restart the run with --overwrite") from None
    return None


def save_training_state(out: Path, members: Sequence[Any], cursors: dict[str, Any], step: int, rows: int,
                        metric_offsets: Sequence[int]) -> Path:
    """Checkpoint every member of a run (a sweep shares one checkpoint): weights, Adam, dead-latent
    counters, the logging window and metrics.jsonl's length, plus the data cursors and the RNG."""
    tensors: dict[str, torch.Tensor] = dict(rng_tensors())
    meta = []
    for i, m in enumerate(members):
        for key, value in m.dictionary.state_dict().items():
            tensors[f"m{i}.model.{key}"] = value.detach().cpu()
        opt_tensors, opt_meta = optimizer_tensors(m.optimizer, f"m{i}.adam.")
        tensors.update({k: v.cpu() for k, v in opt_tensors.items()})
        tensors[f"m{i}.rows_since_fired"] = m.state.rows_since_fired.cpu()
        meta.append({"optimizer": opt_meta, "window": m.window, "metrics_offset": metric_offsets[i], "lr": m.base_lr})
    return save_checkpoint(out, tensors, {"step": step, "rows_seen": rows, "cursors": cursors, "members": meta})


def restore_training_state(out: Path, members: Sequence[Any], readers: Sequence[Any], truncate_metrics: bool) -> tuple[int, int]:
    """Load the newest checkpoint into the members and readers; (step, rows seen), or (0, 0) without one.

    ``truncate_metrics`` (rank 0) cuts each metrics.jsonl back to its length at the checkpoint, so
    the lines logged after it are written again exactly once.
    """
    found = load_checkpoint(out)
    if found is None:
        return 0, 0
    tensors, state = found
    for i, m in enumerate(members):
        model = {k[len(f"m{i}.model."):]: v for k, v in tensors.items() if k.startswith(f"m{i}.model.")}
        m.dictionary.load_state_dict(model)
        load_optimizer(m.optimizer, tensors, f"m{i}.adam.", state["members"][i]["optimizer"])
        m.state.rows_since_fired.copy_(tensors[f"m{i}.rows_since_fired"])
        m.window = dict(state["members"][i]["window"])
        m.base_lr = float(state["members"][i].get("lr", m.base_lr))  # the rate the run chose (lr_search) or was given
        metrics = Path(m.run_dir) / METRICS_FILE
        if truncate_metrics and metrics.exists():
            with open(metrics, "r+b") as f:
                f.truncate(state["members"][i]["metrics_offset"])
    for reader in readers:
        reader.load_state_dict(state["cursors"][str(reader.rank)])
    restore_rng(tensors)
    return int(state["step"]), int(state["rows_seen"])


def rng_tensors() -> dict[str, torch.Tensor]:
    return {"rng.torch": torch.get_rng_state()}


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
