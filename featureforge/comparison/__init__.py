"""``featureforge compare`` (``featureforge.compare``): match the latents (or neurons) of several dictionaries.

Modules, one job each: ``_compare`` (the verb), ``_runs`` (the run folders compared, their
dictionaries and stores), ``_similarity`` (each pair's cosines and correlations), ``_report``
(``compare.json`` and the folder), ``_match`` (best partners and the Hungarian matching from a
similarity matrix seen in blocks), ``_correlation`` (code correlations
streamed over the eval rows, and the rotation baseline), ``_rows`` (which rows are compared, and
the token check between stores of different models), ``_impact`` (the CE-loss change when a
set of units is ablated, against frequency-matched random sets), ``_ablate`` (``featureforge ablate``: which
units, from a comparison or given, and the result written beside the comparison) and ``_plots``. ``best_matches`` reads a
written comparison back (the dashboard's feature pages use it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._compare import COMPARE_FILE, DEFAULT_THRESHOLDS, PAIRS_DIR, compare, pair_file
from ._ablate import ABLATION_DIR, ablate, select_units
from ._impact import ablation_impact, frequency_matched

__all__ = ["ABLATION_DIR", "COMPARE_FILE", "DEFAULT_THRESHOLDS", "PAIRS_DIR", "ablate", "ablation_impact", "best_matches", "compare",
           "frequency_matched", "pair_file", "select_units"]


def best_matches(out: str | Path, run: str | Path, latent: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """For a run of a written comparison, each latent's best partner in every other compared run.

    Returns ``{latent: [{"run", "latent", "activation", "decoder"?, "shared"?}, ...]}`` (only
    ``latent`` when given); ``{}`` when the run was not part of the comparison.
    """
    out = Path(out)
    report = json.loads((out / COMPARE_FILE).read_text())
    target = Path(run).resolve()
    paths = [Path(r["path"]).resolve() for r in report["runs"]]
    if target not in paths:
        return {}
    me = paths.index(target)
    found: dict[int, list[dict[str, Any]]] = {}
    for entry in report["pairs"]:
        i, j = entry["index"]
        if me not in (i, j):
            continue
        data = json.loads((out / entry["file"]).read_text())
        side, other = ("a", j) if me == i else ("b", i)
        act = data[f"{side}_activation"]
        dec = data.get(f"{side}_decoder")
        shared = data.get("a_shared") if side == "a" else None
        wanted = range(len(act["best"])) if latent is None else [int(latent)]
        for k in wanted:
            if k >= len(act["best"]):
                continue
            row: dict[str, Any] = {"run": report["runs"][other]["name"], "latent": act["best"][k], "activation": act["best_score"][k],
                                   "hungarian": act["matched"][k], "hungarian_activation": act["matched_score"][k]}
            if dec is not None:
                row["decoder_latent"], row["decoder"] = dec["best"][k], dec["best_score"][k]
            if shared is not None:
                row["shared"] = bool(shared[k])
            found.setdefault(k, []).append(row)
    return found
