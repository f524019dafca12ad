"""``featureforge evaluate``: run evaluators on a trained run and write ``report.json``.

``evaluate(run, store=...)`` loads a run, picks the eval rows (the run's held-out chunks when the
store is the one it was trained on, else the first ``rows`` committed rows, see ``featureforge.store._holdout``),
fills an ``EvaluationContext`` (``_context``), runs the evaluators and writes ``report.json``
into the run folder and their plots into ``RUN/plots/``. The metrics themselves are in
``metrics`` (formulas) and ``_accumulators`` (streaming over the eval rows).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import BadInputError, OptionError
from ..run import REPORT_FILE, plots_dir

if TYPE_CHECKING:  # pragma: no cover
    from ._context import EvaluationContext
    from ..roles import Evaluator
    from ..store._view import ActivationStore

__all__ = ["REPORT_FILE", "default_evaluators", "evaluate", "report_path", "summary_lines"]

REPORT_FORMAT_VERSION = 1

def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and ±inf become null (strict JSON has no such numbers)."""
    import numpy as np

    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray) or type(value).__name__ == "Tensor":  # torch tensors, without importing torch
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def default_evaluators(store: "ActivationStore", occasion: str = "evaluate") -> list[str]:
    """The installed evaluators that declare themselves a default for ``store`` on ``occasion``
    (``Evaluator.default_for``), ``reconstruction`` first; during training, ``reconstruction``
    when none does."""
    from ..plugins import get_registry

    registry = get_registry()
    names = [name for name in registry.names("evaluator") if registry.get("evaluator", name).default_for(store, occasion)]
    names.sort(key=lambda name: name != "reconstruction")
    return names or (["reconstruction"] if occasion == "training" else [])


def _instantiate(evaluators: Any, store: "ActivationStore") -> list["Evaluator"]:
    from ..plugins import get_registry
    from ..roles import Evaluator

    if evaluators is None:
        evaluators = default_evaluators(store)
    elif isinstance(evaluators, (str, Evaluator)):
        evaluators = [evaluators]
    if isinstance(evaluators, Mapping):  # name -> options
        items = list(evaluators.items())
    else:
        items = [(e, None) for e in evaluators]
    if not items:
        raise OptionError("no evaluator given; name one with --evaluator NAME (see `featureforge plugins`)")
    out: list[Evaluator] = []
    seen: set[str] = set()
    for spec, options in items:
        instance = spec if isinstance(spec, Evaluator) else get_registry().get("evaluator", str(spec))(options)
        if instance.name in seen:
            raise OptionError(f"evaluator {instance.name!r} is named twice; name each evaluator once")
        seen.add(instance.name)
        out.append(instance)
    return out


def evaluate(
    run: str | os.PathLike,
    store: str | os.PathLike | ActivationStore | None = None,
    evaluators: Sequence[str | Evaluator] | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    rows: int | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained run on a store and write ``report.json`` (plus plots) into the run folder.

    Parameters
    ----------
    run
        A run folder written by ``featureforge train`` (``config.json`` + ``weights.safetensors``),
        or a sweep's folder: then every member is evaluated and the summary ``sweep.json`` (and
        ``sweep.png``) written into it and returned (see ``_sweeps``).
    store
        Store path, fsspec URL or an opened ``ActivationStore``; its ``d_in`` must be the run's.
        Default: the store the run was trained on (a streamed run's held-out store).
    evaluators
        Evaluator names (or instances, or a mapping name -> options). Default: ``reconstruction``,
        plus ``ground-truth`` when the store holds ground truth.
    out_dir
        Where ``report.json`` and ``plots/`` go; default the run folder.
    rows
        Eval rows: caps the run's held-out rows when ``store`` is the run's store, else how many
        of the store's first committed rows to use (default 65536).
    storage_options
        fsspec options for a remote ``store``.
    device
        Torch device to evaluate on (default: ``cuda`` when available, else ``cpu``).
    progress
        Whether evaluators may show progress bars.

    Returns
    -------
    dict
        The report as written: ``run``, ``store``, ``eval_rows``, and under ``evaluators`` each
        evaluator's ``metrics`` and ``artifacts`` (paths relative to the report's folder). An
        earlier report's evaluators that are not run again are kept when it scored the same
        weights on the same store and rows.
    """
    from ..runtime import resolve_device
    from ._context import EvaluationContext
    from ..store._view import ActivationStore, open_store
    from ._sweeps import evaluate_sweep, is_sweep

    if store is None:
        from ..run import trained_store

        store = trained_store(run)
    opened = store if isinstance(store, ActivationStore) else open_store(store, storage_options)
    instances = _instantiate(evaluators, opened)
    dev = resolve_device(device)
    # One context for the whole call: a sweep's members share the store's rebuilt source.
    base = EvaluationContext(opened, Path(run), device=str(dev), progress=progress)
    if is_sweep(run):
        if out_dir is not None:
            raise OptionError(f"{run} is a sweep: each member's report goes into its own folder; leave out out_dir")
        return evaluate_sweep(run, lambda member: _evaluate_run(member, instances, base, None, rows), opened.url)
    return _evaluate_run(Path(run), instances, base, out_dir, rows)


def _evaluate_run(run_dir: Path, instances: list[Evaluator], base: EvaluationContext, out_dir: str | os.PathLike | None,
                  rows: int | None) -> dict[str, Any]:
    """``evaluate`` for one run folder, with the evaluators and the store's context already made."""
    from ..dictionary import load
    from ..store._holdout import run_store, select_eval_rows
    from ..files import write_json
    from ..run import RunConfig

    config = RunConfig.read(run_dir)
    opened = run_store(base.store, config)  # a run on one site of several reads that site's rows
    if int(config.d_in) != opened.d_in:
        raise BadInputError(
            f"run {run_dir} has d_in={int(config.d_in)} but store {opened.url} has d_in={opened.d_in}; "
            "evaluate on activations from the hook point the run was trained on"
        )
    chosen = select_eval_rows(opened, config.to_dict(), rows)
    dictionary = load(run_dir)
    dictionary.to(base.device)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    context = base.derive(out_dir=plots_dir(out), run_dir=run_dir, run_config=config, eval_rows=chosen)
    if opened is not base.store:
        context = context.derive(store=opened, eval_rows=chosen)
    results: dict[str, Any] = {}
    for evaluator in instances:
        result = evaluator.evaluate(dictionary, context)
        artifacts = {}
        for key, path in result.artifacts.items():
            p = Path(path)
            try:
                artifacts[key] = str(p.resolve().relative_to(out.resolve()))
            except ValueError:
                artifacts[key] = str(p)
        results[evaluator.name] = {"options": evaluator.options_dict(), "metrics": result.metrics, "artifacts": artifacts}
    report = _jsonable(
        {
            "format_version": REPORT_FORMAT_VERSION,
            "run": str(run_dir),
            "store": opened.url,
            "trainer": config.trainer,
            "d_in": int(config.d_in),
            "d_dict": int(config.d_dict),
            "weights_sha256": _weights_digest(run_dir),
            "eval_rows": chosen.describe(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "evaluators": results,
        }
    )
    report["evaluators"] = {**_earlier_results(out / REPORT_FILE, report), **report["evaluators"]}
    write_json(out / REPORT_FILE, report)
    return report


def _weights_digest(run_dir: Path) -> str:
    """SHA-256 of the run's weights file: what says an earlier report scored the same dictionary."""
    import hashlib

    from ..run import WEIGHTS_FILE

    digest = hashlib.sha256()
    with open(run_dir / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _earlier_results(path: Path, report: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluators of an earlier ``report.json`` that scored the same weights on the same store and
    rows: kept, so evaluating ``reconstruction`` after ``downstream`` does not lose ``downstream``.
    Anything else (another store, other rows, retrained weights, an unreadable file) is replaced."""
    import json

    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = isinstance(earlier, dict) and all(earlier.get(key) == report[key] for key in ("store", "eval_rows", "weights_sha256"))
    evaluators = earlier.get("evaluators") if same else None
    return dict(evaluators) if isinstance(evaluators, dict) else {}


def report_path(run: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Where ``evaluate`` writes ``report.json`` for these arguments."""
    return Path(out_dir if out_dir is not None else run) / REPORT_FILE


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A short human summary of a report: eval rows, then each evaluator's scalar metrics and plots."""
    rows = report.get("eval_rows", {})
    where = "held-out rows of the run's store" if rows.get("selection") == "holdout" else "first committed rows of the store"
    lines = [f"run {report['run']} on {report['store']}: {rows.get('rows', 0):,} {where}"]
    for name, result in report.get("evaluators", {}).items():
        lines.append(f"{name}")
        for key, value in result.get("metrics", {}).items():
            if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
                continue
            shown = "n/a" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
            lines.append(f"  {key:<22} {shown}")
        for key, path in result.get("artifacts", {}).items():
            lines.append(f"  {key:<22} {path}")
    return lines
