"""The run folder: its file names, the typed ``config.json`` and the rules for (re)using a folder.

Every reader and writer of a run's ``config.json`` goes through :class:`RunConfig`, so the format
version is checked in one place (a run written by a newer featureforge is refused with "upgrade
featureforge" instead of being misread) and the store-identity rule that decides whether a store
is the run's own lives here too. A run folder holds::

    config.json            RunConfig: what rebuilds the dictionary and how it was trained
    weights.safetensors    the dictionary's tensors
    metrics.jsonl          one JSON line per logging step (and per evaluation during training)
    report.json            what ``featureforge evaluate`` measured (``read_report``)
    plots/                 training.png, evaluators' plots
    checkpoint/            model + optimiser state and data cursors for --resume
    heldout/               a streamed run's held-out rows, a store (a sweep keeps one beside its members)

A run is *complete* only when its config says so, its weights are whole and its training plot
exists: the status is written last, after the plots, so a kill at any earlier moment leaves a run
that ``--resume`` finishes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import CorruptRunError, FeatureforgeError
from .files import write_json

if TYPE_CHECKING:  # pragma: no cover
    from .store._view import ActivationStore

#: Version of the run-folder layout this featureforge writes and the newest it reads.
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.json"
PLOTS_DIR = "plots"
TRAINING_PLOT = "training.png"
CHECKPOINT_DIR = "checkpoint"
#: A streamed run's held-out rows (a store, written from the source's leading rows; its eval rows).
HELDOUT_STORE = "heldout"

__all__ = [
    "CHECKPOINT_DIR", "CONFIG_FILE", "HELDOUT_STORE", "METRICS_FILE", "PLOTS_DIR", "REPORT_FILE", "RUN_FORMAT_VERSION", "TRAINING_PLOT",
    "WEIGHTS_FILE", "RunConfig", "RunFormatError", "is_complete", "plots_dir", "read_metrics", "read_report",
]

STATUS_TRAINING = "training"
STATUS_COMPLETE = "complete"


class RunFormatError(FeatureforgeError):
    """A run folder written by a newer featureforge than this one."""


@dataclasses.dataclass
class RunConfig:
    """``config.json``: what rebuilds a run's dictionary, how it was trained and on which store.

    Field order is the order written. Keys this version does not know are kept in ``extra`` and
    written back unchanged, so an older reader never drops what a plugin or a newer minor version
    recorded.
    """

    trainer: str
    d_in: int
    d_dict: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = RUN_FORMAT_VERSION
    trainer_distribution: str | None = None
    trainer_version: str | None = None
    sweep_label: str | None = None
    normalisation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    world_size: int | None = None
    #: The store trained on, as :func:`store_identity` records it.
    store: dict[str, Any] | None = None
    #: Which store site fills each batch role the trainer reads (``{"acts": "in", "target": "out"}``,
    #: ``{"sites": [...]}``; see ``DictionaryTrainer.sites_for``); absent for a run on a one-site store.
    sites: dict[str, Any] | None = None
    #: With ``sites``: each role's row width and normalisation scale (``DictionaryTrainer.role_widths`` /
    #: ``role_scales``), which ``featureforge.load`` hands the trainer again before ``build``.
    role_widths: dict[str, Any] | None = None
    role_scales: dict[str, Any] | None = None
    #: Held-out chunks: ``{"chunks": [...], "rows": N}``.
    holdout: dict[str, Any] | None = None
    imported_from: dict[str, Any] | None = None
    status: str = STATUS_TRAINING
    training_result: dict[str, Any] | None = None
    #: Without --lr: the race that chose the learning rate (see featureforge.training._lr_search.record).
    lr_search: dict[str, Any] | None = None
    #: Units of weights.safetensors: ``{"units": "raw", "input_scale_folded": s}`` or ``"training"`` (see Dictionary.fold_input_scale).
    weights_units: dict[str, Any] | None = None
    #: A streamed run (no store): the source, its options and which rows are held out or trained on
    #: (featureforge.training._stream.StreamPlan.record), plus ``heldout_store``, the held-out
    #: store's path relative to the run folder, and, once trained, ``next_doc_id`` (1 + the largest
    #: ``doc_ids`` the source produced for training, when it has that column). None for a store's run.
    stream: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | os.PathLike = "config") -> "RunConfig":
        """Check the format version and the keys that rebuild a dictionary; keep unknown keys in ``extra``."""
        version = data.get("format_version", RUN_FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptRunError(f"{where}: format_version {version!r} is not an integer; restore the file or retrain")
        if version > RUN_FORMAT_VERSION:
            raise RunFormatError(
                f"{where} uses run format {version} but this featureforge reads up to {RUN_FORMAT_VERSION}; "
                "upgrade featureforge (pip install -U featureforge) to use this run"
            )
        if data.get("kind") == "steering-vector":  # featureforge.vectors' folder: same file names, not a dictionary
            raise CorruptRunError(f"{where} is a steering vector, not a dictionary run; pass it as --vector (featureforge steer, decompose)")
        for key in ("trainer", "d_in", "d_dict"):
            if key not in data:
                raise CorruptRunError(f"{where} has no {key!r}; it was not written by featureforge train")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known["format_version"] = version
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in field order; unset optional fields are left out (as earlier versions wrote)."""
        out: dict[str, Any] = {"format_version": self.format_version}
        for f in dataclasses.fields(self):
            if f.name in ("format_version", "extra"):
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        out.update(self.extra)
        return out

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    # -- files --------------------------------------------------------------------------------
    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "RunConfig":
        """``run_dir/config.json``, refused in one line when missing, damaged or too new."""
        path = Path(run_dir) / CONFIG_FILE
        if not path.exists():
            raise FeatureforgeError(f"{run_dir} is not a featureforge run (no {CONFIG_FILE}); pass the --out folder of `featureforge train`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptRunError(f"{path} is not valid JSON ({exc}); restore it or retrain") from None
        if not isinstance(data, dict):
            raise CorruptRunError(f"{path} is not a JSON object; restore it or retrain")
        return cls.from_dict(data, path)

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Write ``config.json`` atomically; returns its path."""
        path = Path(run_dir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())
        return path

    # -- questions ----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    def trained_on(self, store: "ActivationStore") -> bool:
        """Whether ``store`` is the store this run was trained on (see :func:`store_matches`)."""
        return store_matches(self.store, store)

    def resume_differences(self, new: "RunConfig", ignore: set[str] = frozenset()) -> list[str]:
        """Settings that differ from ``new`` in a way that makes resuming this run wrong."""
        diffs = [f"{k}: {getattr(self, k)!r} -> {getattr(new, k)!r}" for k in ("trainer", "d_in", "d_dict") if getattr(self, k) != getattr(new, k)]
        oo, no = self.options or {}, new.options or {}
        diffs += [f"{k}: {oo.get(k)!r} -> {no.get(k)!r}" for k in sorted(set(oo) | set(no)) if oo.get(k) != no.get(k)]
        old_store, new_store = self.store or {}, new.store or {}
        if old_store.get("source") != new_store.get("source") or old_store.get("rows") != new_store.get("rows"):
            diffs.append(f"store: {old_store.get('url')} -> {new_store.get('url')}")
        if (self.stream or None) != (new.stream or None):
            diffs.append(f"stream: {(self.stream or {}).get('source')} -> {(new.stream or {}).get('source')}")
        if (self.sites or None) != (new.sites or None):
            diffs.append(f"sites: {self.sites!r} -> {new.sites!r}")
        ot, nt = self.training or {}, new.training or {}
        diffs += [f"{k}: {ot.get(k)!r} -> {nt[k]!r}" for k in nt if k not in ignore and ot.get(k) != nt[k]]
        return diffs


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` as a plain dict (checked like :meth:`RunConfig.read`), for code that wants a mapping."""
    return RunConfig.read(run_dir).to_dict()


# -- the store a run was trained on -----------------------------------------------------------------
def store_identity(store: "ActivationStore") -> dict[str, Any]:
    """What a run records about its store (``config.json``'s ``store``)."""
    return {"url": store.url, "source": store.source, "rows": store.rows, "d_in": store.d_in, "dtype": store.dtype,
            "provenance": store.provenance}


def trained_store(run_dir: str | os.PathLike) -> str:
    """Where the store a run (or a sweep's first member) was trained on is: a streamed run's
    held-out store beside it, else the recorded store URL; refused in one line when neither is known."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        members = sorted(d for d in run_dir.iterdir() if (d / CONFIG_FILE).exists()) if run_dir.is_dir() else []
        run_dir = members[0] if members else run_dir
    config = RunConfig.read(run_dir)
    if config.stream and config.stream.get("heldout_store"):
        return str((run_dir / config.stream["heldout_store"]).resolve())
    recorded = config.store.get("url") if isinstance(config.store, dict) else config.store
    if not recorded:
        raise FeatureforgeError(f"run {run_dir} records no store; name one with --store")
    return str(recorded)


def _normalised_url(url: str) -> str:
    from .store._location import Location

    loc = Location(url)
    return loc.root if not loc.remote else loc.text.rstrip("/")


def store_matches(recorded: Any, store: "ActivationStore") -> bool:
    """Whether ``store`` is the one described by a run's recorded ``store`` (a dict, or a bare URL).

    A recorded source must have the store's name and options; then equal URLs (local paths
    compared absolute) decide, and otherwise every other recorded fact (rows, d_in, dtype,
    rows_per_chunk) must be equal too: a copy or a move of the store, or a path given relative to
    another folder.
    """
    if not recorded:
        return False
    store = getattr(store, "base", store)  # a site view is its store (config.json records the whole store)
    if isinstance(recorded, str):
        recorded = {"url": recorded}
    if not isinstance(recorded, Mapping):
        return False
    source = recorded.get("source")
    if isinstance(source, Mapping) and "name" in source:
        mine = store.source
        if source.get("name") != mine.get("name") or (source.get("options") or {}) != (mine.get("options") or {}):
            return False
    url = recorded.get("url")
    if url:
        try:
            if _normalised_url(str(url)) == _normalised_url(store.url):
                return True
        except Exception:  # an unparsable recorded URL simply does not match
            pass
    if not isinstance(source, Mapping) or "name" not in source:
        return False
    facts = {"rows": store.rows, "d_in": store.d_in, "dtype": store.dtype, "rows_per_chunk": store.rows_per_chunk}
    return all(recorded.get(key) is None or recorded.get(key) == value for key, value in facts.items())


# -- folder policy ----------------------------------------------------------------------------------
def weights_whole(run_dir: str | os.PathLike) -> bool:
    """Whether ``weights.safetensors`` exists and its header covers the whole file (not truncated)."""
    from safetensors import safe_open

    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt"):
            return True
    except Exception:
        return False


def is_complete(run_dir: str | os.PathLike) -> bool:
    """A finished run: its status says complete (written last, after the plots) and its weights are whole."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        return False
    return RunConfig.read(run_dir).complete and weights_whole(run_dir)


def is_run_folder(path: Path) -> bool:
    """A folder featureforge wrote as a run (or a sweep of runs, or a run that only has a checkpoint)."""
    if (path / CONFIG_FILE).exists() or (path / CHECKPOINT_DIR).exists():
        return True
    return any((d / CONFIG_FILE).exists() for d in path.iterdir() if d.is_dir())


def prepare_out_dir(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, delete: bool = True,
                    resumable: bool = True) -> None:
    """Refuse to write into an existing run unless ``resume`` or ``overwrite``; ``overwrite`` deletes it.

    Only a folder that is a featureforge run is ever deleted; any other non-empty folder is refused
    untouched. ``delete=False`` checks without deleting (the other DDP ranks).
    """
    out = Path(out)
    if not out.exists() or not any(out.iterdir()) or resume:
        return
    if not overwrite:
        how = "pass --resume to continue it or --overwrite to start again" if resumable else "pass --overwrite to replace it"
        raise FeatureforgeError(f"run folder {out} already exists; {how}")
    if not is_run_folder(out):
        raise FeatureforgeError(f"{out} exists and is not a featureforge run; choose another --out (nothing was deleted)")
    if delete:
        shutil.rmtree(out)


# -- what a run's other files hold --------------------------------------------------------------
def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every line of ``metrics.jsonl`` (training log, then evaluations during training); [] if none yet.

    A line cut short by a kill (the last one) is skipped: ``--resume`` rewrites it.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return lines


def read_report(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``report.json`` (``featureforge evaluate``), or None before it is evaluated."""
    path = Path(run_dir) / REPORT_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptRunError(f"{path} is not valid JSON ({exc}); evaluate the run again to rewrite it") from None
    return data


def plots_dir(run_dir: str | os.PathLike) -> Path:
    """Where a run's plots go (``RUN/plots``): training.png and each evaluator's figures."""
    return Path(run_dir) / PLOTS_DIR
