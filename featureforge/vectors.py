"""Steering vectors: a direction at a hook point found from two prompt sets, without a dictionary.

``featureforge vector`` and ``featureforge.vector`` run a source's live model (``splice(None)``)
on a positive and a negative set of prompts, read the hook point's rows, reduce each prompt to one
row (the mean over its stored tokens, or its last token) and take

* ``method="mean"``: the difference of the two sets' means (contrastive activation addition:
  Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation Addition"; Turner et al. 2023,
  "Activation Addition", whose single pair is the one-prompt case);
* ``method="pca"``: the top right singular vector of the paired differences ``pos_i - neg_i``
  (uncentred, so a consistent shift is what it finds; the PCA reading of Zou et al. 2023,
  "Representation Engineering"), its sign turned towards the mean difference.

A vector is saved as a small folder in the run folder's conventions (``run.CONFIG_FILE``,
``run.WEIGHTS_FILE``; JSON config with ``kind = "steering-vector"``, safetensors weights; never a
pickle)::

    config.json            method, hook, site, the source's name and options (the live model is
                           rebuilt from them), prompt counts, typical projection, provenance
    weights.safetensors    direction [d] (unit norm), mean_positive [d], mean_negative [d]

``typical`` is the unit of α when steering (``units="typical"``): the gap between the two sets'
mean projections on the unit direction (for ``mean`` the difference's norm), so α = 1 moves a row
by as much as the concept moved the prompts along it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import BadInputError, CorruptRunError, FeatureforgeError
from .files import atomic_write, write_json

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .roles import ActivationSource

__all__ = ["KIND", "METHODS", "REDUCE", "SteeringVector", "contrast", "is_vector", "load_vector", "make_vector", "read_prompts"]

#: ``config.json``'s ``kind`` for a steering-vector folder (a dictionary run has none).
KIND = "steering-vector"
VECTOR_FORMAT_VERSION = 1
METHODS = ("mean", "pca")
REDUCE = ("mean", "last")
#: A difference below this fraction of the rows' RMS norm is zero (identical prompt sets).
ZERO_TOLERANCE = 1e-6


@dataclasses.dataclass
class SteeringVector:
    """A unit direction at a hook point, its typical projection (the unit of α) and where it came from."""

    direction: "torch.Tensor"
    typical: float
    hook: str
    method: str = "mean"
    reduce: str = "mean"
    #: The source that rebuilds the live model: ``{"name", "options", "distribution", "version"}``.
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    mean_positive: "torch.Tensor | None" = None
    mean_negative: "torch.Tensor | None" = None
    #: Prompts and stored rows of each set, norms and spread; provenance of the model.
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str = ""
    path: str | None = None

    @property
    def d_in(self) -> int:
        return int(self.direction.shape[-1])

    def config(self) -> dict[str, Any]:
        """What ``config.json`` holds."""
        return {"format_version": VECTOR_FORMAT_VERSION, "kind": KIND, "name": self.name, "method": self.method,
                "reduce": self.reduce, "hook": self.hook, "d_in": self.d_in, "typical": self.typical, "source": self.source,
                "stats": self.stats, "provenance": self.provenance,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the folder (weights first, config last: a folder with a config is whole)."""
        from safetensors.torch import save_file

        from .run import CONFIG_FILE, WEIGHTS_FILE

        out = Path(out)
        if (out / CONFIG_FILE).exists() and not overwrite:
            raise FeatureforgeError(f"{out} already holds a vector or run; pass --overwrite to replace it, or another --out")
        if out.exists() and any(out.iterdir()) and not (out / CONFIG_FILE).exists():
            raise FeatureforgeError(f"{out} exists and is not a steering vector; choose another --out (nothing was changed)")
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"direction": self.direction.float().contiguous().cpu()}
        for key in ("mean_positive", "mean_negative"):
            value = getattr(self, key)
            if value is not None:
                tensors[key] = value.float().contiguous().cpu()
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
        write_json(out / CONFIG_FILE, self.config())
        self.path = str(out)
        return out


def is_vector(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :meth:`SteeringVector.save`."""
    import json

    from .run import CONFIG_FILE

    cfg = Path(path) / CONFIG_FILE
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_vector(path: str | os.PathLike | SteeringVector) -> SteeringVector:
    """A saved vector (or one passed through); one line when the folder is not a vector."""
    import json

    from safetensors.torch import load_file

    from .run import CONFIG_FILE, WEIGHTS_FILE

    if isinstance(path, SteeringVector):
        return path
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise BadInputError(f"{folder} is not a steering vector (no {CONFIG_FILE}); make one with `featureforge vector ... --out {folder}`")
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise CorruptRunError(f"{folder / CONFIG_FILE} is not valid JSON ({exc}); make the vector again") from None
    if not isinstance(cfg, dict) or cfg.get("kind") != KIND:
        raise BadInputError(f"{folder} is a dictionary run, not a steering vector; pass it as RUN (with --latent), "
                            "or make a vector with `featureforge vector`")
    if int(cfg.get("format_version", 1)) > VECTOR_FORMAT_VERSION:
        raise FeatureforgeError(f"{folder} uses vector format {cfg['format_version']}; upgrade featureforge to read it")
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except Exception as exc:
        raise CorruptRunError(f"{folder / WEIGHTS_FILE} is missing or damaged ({type(exc).__name__}); make the vector again") from None
    return SteeringVector(direction=tensors["direction"], typical=float(cfg["typical"]), hook=str(cfg["hook"]), method=cfg.get("method", "mean"),
                          reduce=cfg.get("reduce", "mean"), source=dict(cfg.get("source") or {}),
                          mean_positive=tensors.get("mean_positive"), mean_negative=tensors.get("mean_negative"),
                          stats=dict(cfg.get("stats") or {}), provenance=dict(cfg.get("provenance") or {}),
                          name=str(cfg.get("name") or folder.name), path=str(folder))


# -- prompts -----------------------------------------------------------------------------------
def read_prompts(prompts: str | os.PathLike | Sequence[str], what: str = "prompts") -> list[str]:
    """A prompt set: a list of strings, or a file of them.

    ``.jsonl``: one JSON string or object with ``"text"`` per line. ``.txt`` (or any other
    file): blank-line separated prompts when the file has a blank line (multi-line code), else
    one prompt per line.
    """
    import json

    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if not path.is_file():
            raise BadInputError(f"{what} file {path} does not exist; pass a .txt (one prompt a line, or blank-line separated) or .jsonl file")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            items = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError:
                    raise BadInputError(f"{path}:{n} is not JSON; write one string or {{\"text\": ...}} a line") from None
                items.append(value.get("text", "") if isinstance(value, dict) else str(value))
        else:
            lines = text.splitlines()
            blocks = "\n".join(lines).split("\n\n") if any(not ln.strip() for ln in lines) else lines
            items = [b.strip("\n") for b in blocks]
    else:
        items = [str(p) for p in prompts]
    items = [p for p in items if p.strip()]
    if not items:
        raise BadInputError(f"the {what} are empty; give at least one prompt")
    return items


# -- the arithmetic (pure) --------------------------------------------------------------------
def contrast(positive: "torch.Tensor", negative: "torch.Tensor", method: str = "mean") -> tuple["torch.Tensor", float, dict[str, float]]:
    """(unit direction, typical projection, stats) from per-prompt rows ``[n_pos, d]`` and ``[n_neg, d]``.

    Refuses a zero difference (identical sets) in one line.
    """
    import torch

    if method not in METHODS:
        raise BadInputError(f"method {method!r} is not one of {', '.join(METHODS)}")
    pos, neg = positive.double(), negative.double()
    diff = pos.mean(0) - neg.mean(0)
    scale = torch.cat([pos, neg]).pow(2).sum(-1).mean().sqrt()
    norm = float(diff.norm())
    if norm <= ZERO_TOLERANCE * max(float(scale), 1e-30):
        raise BadInputError("the positive and negative prompts give the same mean activation (difference 0): "
                            "the vector would be zero; give two prompt sets that differ in the concept")
    stats: dict[str, float] = {"difference_norm": norm, "row_rms_norm": float(scale)}
    if method == "mean":
        direction = diff / norm
    else:
        if pos.shape[0] != neg.shape[0]:
            raise BadInputError(f"method pca pairs the prompts, but there are {pos.shape[0]} positive and {neg.shape[0]} negative; "
                                "give as many of each (pair i with i), or use --method mean")
        pairs = pos - neg
        _, sv, vh = torch.linalg.svd(pairs, full_matrices=False)
        direction = vh[0] if float(vh[0] @ diff) >= 0 else -vh[0]
        stats["explained_by_top"] = float(sv[0] ** 2 / sv.pow(2).sum())
        stats["cosine_to_mean_difference"] = float(direction @ diff / norm)
    projection_pos, projection_neg = pos @ direction, neg @ direction
    typical = float(projection_pos.mean() - projection_neg.mean())
    if typical <= 0:  # pca: the top paired difference is orthogonal to the mean shift
        raise BadInputError(f"the {method} direction does not separate the prompt sets (projection gap {typical:.3g}); use --method mean")
    stats.update({"projection_positive": float(projection_pos.mean()), "projection_negative": float(projection_neg.mean()),
                  "projection_spread": float(torch.cat([projection_pos, projection_neg]).std()) if pos.shape[0] + neg.shape[0] > 1 else 0.0})
    return direction.float(), typical, stats


# -- reading rows from the live model -----------------------------------------------------------
def prompt_rows(live: Any, prompts: Sequence[str], reduce: str = "mean") -> tuple["torch.Tensor", int]:
    """One row per prompt at the live model's hook point (mean over its stored tokens, or its last), and the rows read."""
    import torch

    from .steering import steerable

    if reduce not in REDUCE:
        raise BadInputError(f"reduce {reduce!r} is not one of {', '.join(REDUCE)}")
    steerable(live)
    out, total = [], 0
    for prompt in prompts:
        ids = torch.tensor([live.prompt_ids(prompt)], device=live.device)
        mask = torch.ones_like(ids)
        keep = live.token_mask(ids, mask)
        if not bool(keep.any()):
            raise BadInputError(f"prompt {prompt[:40]!r} has no stored token at the hook; give longer prompts")
        held: list[torch.Tensor] = []

        def spy(rows: torch.Tensor) -> torch.Tensor:
            held.append(rows.detach().float().cpu())
            return rows

        live(ids, mask, replace=spy, token_mask=keep)
        rows = held[0]
        total += rows.shape[0]
        out.append(rows.mean(0) if reduce == "mean" else rows[-1])
    return torch.stack(out), total


def make_vector(
    source: "str | ActivationSource",
    options: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    positive: str | os.PathLike | Sequence[str],
    negative: str | os.PathLike | Sequence[str],
    out: str | os.PathLike | None = None,
    method: str = "mean",
    reduce: str = "mean",
    overwrite: bool = False,
) -> SteeringVector:
    """The steering vector of ``positive`` against ``negative`` prompts at the source's hook point.

    ``source``: a registered source name with ``options`` (``-o model=... -o hook=...``) or an
    instance; it must be able to run its model (``can_splice``). Saved to ``out`` when given.
    """
    from .api import make_source
    from .plugins import get_registry

    if method not in METHODS:
        raise BadInputError(f"method {method!r} is not one of {', '.join(METHODS)}")
    pos_prompts = read_prompts(positive, "positive prompts")
    neg_prompts = read_prompts(negative, "negative prompts")
    src = make_source(source, options)
    if not src.can_splice:
        raise BadInputError(f"source {src.name!r} cannot run its model live, so it cannot read prompts; use a model source such as hf")
    with src.splice(None) as live:
        pos_rows, pos_count = prompt_rows(live, pos_prompts, reduce)
        neg_rows, neg_count = prompt_rows(live, neg_prompts, reduce)
        hook = live.hook
    direction, typical, stats = contrast(pos_rows, neg_rows, method)
    stats.update({"positive_prompts": len(pos_prompts), "negative_prompts": len(neg_prompts), "positive_rows": pos_count, "negative_rows": neg_count})
    registration = get_registry().registration_of(type(src))
    record = {"name": src.name, "options": src.options_dict(),
              "distribution": registration.distribution if registration else type(src).__module__,
              "version": registration.version if registration else ""}
    vector = SteeringVector(direction=direction, typical=typical, hook=hook, method=method, reduce=reduce, source=record,
                            mean_positive=pos_rows.mean(0), mean_negative=neg_rows.mean(0), stats=stats,
                            provenance=src.provenance(), name=Path(out).name if out is not None else "")
    if out is not None:
        vector.save(out, overwrite=overwrite)
    return vector
