"""``featureforge ablate`` (``featureforge.ablate``): the CE-loss change of ablating a set of units.

The set is given (``units``) or taken from a written comparison (``compare``): the run's units
whose score in ``runs/K.json`` is above a threshold, or its top fraction, where the score is
Gurnee et al. 2024's excess correlation (``by="excess"``) or the mean best correlation with the
other runs (``by="best"``). The impact itself, against frequency-matched random sets, is
``_impact.ablation_impact``'s; this module picks the units, and writes the result beside the
comparison (``ablation/K.json`` and an ``ablation`` entry of the run's row in ``compare.json``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import BadInputError, OptionError
from ..files import write_json
from ._impact import ablation_impact
from ._report import COMPARE_FILE

__all__ = ["ABLATION_DIR", "ablate", "select_units"]

ABLATION_DIR = "ablation"
SCORES = {"excess": "excess_correlation", "best": "mean_best_correlation"}


def _read_report(compare: Path) -> dict[str, Any]:
    path = compare / COMPARE_FILE
    if not path.is_file():
        raise BadInputError(f"{compare} is not a comparison folder (no {COMPARE_FILE}); pass the --out folder of featureforge compare")
    return json.loads(path.read_text())


def _run_index(report: dict[str, Any], compare: Path, run: str | os.PathLike) -> int:
    """Which of the comparison's runs ``run`` is: by folder (resolved) or by its name in the report."""
    target = Path(run).resolve()
    for k, row in enumerate(report["runs"]):
        if Path(row["path"]).resolve() == target or row["name"] == str(run):
            return k
    names = ", ".join(r["name"] for r in report["runs"])
    raise BadInputError(f"run {run} is not part of comparison {compare} (runs: {names}); pass one of its runs or compare it first")


def _score(value: Any) -> float:
    return -math.inf if value is None or not math.isfinite(float(value)) else float(value)


def select_units(compare: str | os.PathLike, run: str | os.PathLike, *, top: float | None = None, above: float | None = None,
                 by: str = "excess") -> dict[str, Any]:
    """The units of ``run`` to ablate from comparison ``compare``: index, units, frequencies, store, how chosen.

    ``top``: the fraction of units of highest score (rounded to the nearest count); ``above``: every
    unit scoring above it; neither: above the comparison's own excess threshold (its universal units).
    """
    if by not in SCORES:
        raise OptionError(f"--by {by!r} is not one of: {', '.join(SCORES)}")
    if top is not None and above is not None:
        raise OptionError("pass --top or --above, not both")
    if top is not None and not 0.0 <= top <= 1.0:
        raise OptionError(f"--top is a fraction of the units in [0, 1], got {top}")
    compare = Path(compare)
    report = _read_report(compare)
    k = _run_index(report, compare, run)
    data = json.loads((compare / "runs" / f"{k}.json").read_text())
    key = SCORES[by]
    if key not in data:
        raise BadInputError(f"comparison {compare} has no {key.replace('_', ' ')} for its runs (compared with --no-baseline); "
                            "compare again with --baseline, or pass --by best")
    scores = [_score(v) for v in data[key]]
    if top is not None:
        count = int(math.floor(top * len(scores) + 0.5))
        units = sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:count])
        how = f"top {top:g} of units by {key.replace('_', ' ')}"
    else:
        threshold = float(above if above is not None else report.get("excess_threshold") or 0.5)
        units = [i for i, s in enumerate(scores) if s > threshold]
        how = f"{key.replace('_', ' ')} > {threshold:g}"
    return {"index": k, "run": report["runs"][k]["name"], "path": report["runs"][k]["path"], "units": units, "selection": how,
            "frequency": data["firing_frequency"], "store": report["runs"][k]["store"]}


def _run_store(run: str | os.PathLike) -> str:
    from ..run import RunConfig

    url = (RunConfig.read(run).to_dict().get("store") or {}).get("url")
    if not url or not (Path(url).exists() or "://" in str(url)):
        raise BadInputError(f"run {run} records no store that exists here ({url!r}); pass --store STORE")
    return str(url)


def ablate(
    run: str | os.PathLike,
    *,
    units: Sequence[int] | None = None,
    compare: str | os.PathLike | None = None,
    top: float | None = None,
    above: float | None = None,
    by: str = "excess",
    store: Any = None,
    mode: str = "mean",
    random_sets: int = 3,
    max_sequences: int = 64,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Ablate ``units`` of ``run`` (or the units ``compare`` picks: ``top``/``above``/``by``) and as many
    frequency-matched random sets at the store's live model; returns the ΔCE of each (``ablation_impact``'s
    result). ``run`` is a run folder, or with ``compare`` also its name there.

    With ``compare`` the result is written to ``compare/ablation/K.json`` and summarised in the
    run's row of ``compare.json``; ``out`` (a JSON file) writes it elsewhere too.
    """
    if random_sets < 0:
        raise OptionError(f"--random-sets must be at least 0, got {random_sets}")
    if max_sequences < 1:
        raise OptionError(f"--sequences must be at least 1, got {max_sequences}")
    chosen: dict[str, Any] = {}
    if compare is not None:
        if units is not None and (top is not None or above is not None):
            raise OptionError("pass --units or --top/--above, not both")
        chosen = select_units(compare, run, top=top, above=above, by=by)
        run = chosen["path"]  # ``run`` may be its name in the comparison
        if units is not None:
            chosen.update(units=[int(u) for u in units], selection="given units")
    elif top is not None or above is not None:
        raise OptionError("--top and --above pick units from a comparison; pass --from-compare COMPARISON too")
    elif units is None:
        raise OptionError("nothing to ablate; pass --units or --from-compare COMPARISON")
    else:
        chosen = {"units": [int(u) for u in units], "selection": "given units"}
    if not Path(run).exists():
        raise BadInputError(f"run folder {run} does not exist; pass a run folder written by featureforge train")
    source_store = store if store is not None else chosen.get("store") or _run_store(run)
    impact = ablation_impact(run, chosen["units"], store=source_store, frequency=chosen.get("frequency"), random_sets=random_sets,
                             max_sequences=max_sequences, mode=mode, seed=seed)
    result = {"run": str(run), "selection": chosen["selection"], "ablated": chosen["units"], "seed": seed, "sequences": max_sequences, **impact}
    if compare is not None:
        compare = Path(compare)
        file = Path(ABLATION_DIR) / f"{chosen['index']}.json"
        (compare / ABLATION_DIR).mkdir(exist_ok=True)
        write_json(compare / file, result)
        report = _read_report(compare)
        report["runs"][chosen["index"]]["ablation"] = {
            "file": str(file), "selection": chosen["selection"], "units": impact["units"], "mode": mode, "tokens": impact["tokens"],
            "ce_clean": impact["ce_clean"], "delta_ce_ablated": impact["delta_ce_ablated"], "delta_ce_random": impact["delta_ce_random"]}
        write_json(compare / COMPARE_FILE, report)
        result["file"] = str(compare / file)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(out), result)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``featureforge ablate`` prints: the set, the clean CE, each set's ΔCE."""
    lines = [f"{result['mode']}-ablated {result['units']} units of {result['run']} ({result['selection']}); "
             f"{result['tokens']:,} predicted tokens of held-out documents from doc {result['start_doc']}, clean CE {result['ce_clean']:.4f}",
             f"  ablated set: ΔCE {result['delta_ce_ablated']:+.5f}"]
    for k, d in enumerate(result["delta_ce_random"]):
        lines.append(f"  random set {k} (frequency-matched): ΔCE {d:+.5f}")
    if result["delta_ce_random_mean"] is not None:
        lines.append(f"  random mean: ΔCE {result['delta_ce_random_mean']:+.5f}")
    return lines
