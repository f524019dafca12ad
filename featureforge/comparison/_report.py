"""The comparison's report (``compare.json``) and its folder: per-pair and per-run files, plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError
from ..files import atomic_write, write_json
from ._match import Matching
from ._rows import AlignedRows
from ._runs import _Pair, _Run

COMPARE_FILE = "compare.json"
PAIRS_DIR = "pairs"
PLOTS_DIR = "plots"
#: Trainers whose latents are the site's own units: latent i is the same unit in every run of one site.
UNIT_TRAINERS = ("identity", "neurons")


def pair_file(i: int, j: int) -> str:
    """File name of pair (i, j)'s per-latent matches under ``PAIRS_DIR``."""
    return f"{i}-{j}.json"


def _fraction(values: np.ndarray, threshold: float, mask: np.ndarray | None = None) -> float | None:
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    if mask is not None:
        v = v[mask]
    return float((v > threshold).mean()) if len(v) else None


def _r(x: Any) -> Any:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def _method_summary(m: Matching, thresholds: Sequence[float], live_a: np.ndarray, live_b: np.ndarray) -> dict[str, Any]:
    ok = m.matched >= 0
    return {
        "match": m.method,
        "mean_best": _r(float(np.mean(m.best_score))),
        "mean_best_b": _r(float(np.mean(m.best_b_score))),
        "mean_matched": _r(float(np.nanmean(m.matched_score[ok]))) if ok.any() else None,
        # Fraction of A's latents whose Hungarian partner scores above each threshold.
        "shared_fraction": {str(t): _r(_fraction(m.matched_score, t)) for t in thresholds},
        "shared_fraction_live": {str(t): _r(_fraction(m.matched_score, t, live_a)) for t in thresholds},
        # Fraction whose best partner (not one to one) scores above it, on each side.
        "best_fraction": {str(t): _r(_fraction(m.best_score, t)) for t in thresholds},
        "best_fraction_b": {str(t): _r(_fraction(m.best_b_score, t)) for t in thresholds},
    }


def _paulo_belrose(a: _Run, b: _Run, pair: _Pair, threshold: float) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Shared latents of A: decoder-Hungarian partner above ``threshold`` in decoder and encoder cosine."""
    import torch

    dec = pair.matches.get("decoder")
    if dec is None:
        return None
    ok = dec.matched >= 0
    shared = ok & (np.nan_to_num(dec.matched_score, nan=-1) > threshold)
    enc_a, enc_b = a.dictionary.encoder_directions, b.dictionary.encoder_directions
    rule = "decoder cosine only (a dictionary without linear encoder rows)"
    if enc_a is not None and enc_b is not None:
        idx = np.flatnonzero(ok)
        ea = torch.nn.functional.normalize(enc_a.detach().float().cpu()[idx], dim=1)
        eb = torch.nn.functional.normalize(enc_b.detach().float().cpu()[dec.matched[idx]], dim=1)
        enc_cos = np.full(a.m, np.nan, dtype=np.float32)
        enc_cos[idx] = (ea * eb).sum(dim=1).numpy()
        shared &= np.nan_to_num(enc_cos, nan=-1) > threshold
        rule = "decoder-Hungarian partner above the threshold by decoder and by encoder cosine"
    return shared, {"threshold": threshold, "rule": rule, "shared": int(shared.sum()), "shared_fraction": _r(float(shared.mean()))}


def _report(runs: list[_Run], aligned: AlignedRows, pairs: list[_Pair], thresholds: Sequence[float], rule_threshold: float,
            excess_threshold: float, baseline: bool) -> dict[str, Any]:
    freq = [r.moments.frequency() for r in runs]
    live = [f > 0 for f in freq]
    out_pairs = []
    excess_sum = [np.zeros(r.m) for r in runs]
    best_sum = [np.zeros(r.m) for r in runs]
    for p in pairs:
        a, b = runs[p.i], runs[p.j]
        entry: dict[str, Any] = {"a": a.name, "b": b.name, "index": [p.i, p.j], "file": f"{PAIRS_DIR}/{pair_file(p.i, p.j)}"}
        for kind, m in p.matches.items():
            entry[kind] = _method_summary(m, thresholds, live[p.i], live[p.j])
        if not p.directions:
            entry["directions"] = "not compared: the runs read different stores (different spaces)"
        if a.m == b.m and a.config.get("trainer") in UNIT_TRAINERS and b.config.get("trainer") in UNIT_TRAINERS:
            same = p.matches["activation"].same_index  # the same neuron in both (checkpoints of one model)
            entry["same_unit"] = {"mean_correlation": _r(float(np.nanmean(same))),
                                  **{f"fraction_above_{t}": _r(_fraction(same, t)) for t in thresholds}}
        pb = _paulo_belrose(a, b, p, rule_threshold)
        if pb is not None:
            entry["paulo_belrose"] = pb[1]
        act = p.matches["activation"]
        best_sum[p.i] += act.best_score
        best_sum[p.j] += act.best_b_score
        if baseline:
            ex_a, ex_b = act.best_score - p.base_a, act.best_b_score - p.base_b
            excess_sum[p.i] += ex_a
            excess_sum[p.j] += ex_b
            entry["activation"]["baseline_mean_best"] = _r(float(np.mean(p.base_a)))
            entry["activation"]["excess_mean"] = _r(float(np.mean(ex_a)))
            entry["activation"]["universal_fraction"] = _r(float((ex_a > excess_threshold).mean()))
        out_pairs.append(entry)
    n_others = len(runs) - 1
    run_rows = []
    for k, r in enumerate(runs):
        row: dict[str, Any] = {
            "name": r.name, "path": str(r.path), "trainer": r.config.get("trainer"), "d_dict": r.m, "store": r.store.url,
            "live": int(live[k].sum()),
            "mean_best_correlation": _r(float(np.mean(best_sum[k] / n_others))),
        }
        if baseline:
            ex = excess_sum[k] / n_others
            row["excess_correlation_mean"] = _r(float(np.mean(ex)))
            row["universal"] = int((ex > excess_threshold).sum())
            row["universal_fraction"] = _r(float((ex > excess_threshold).mean()))
        run_rows.append(row)
    return {
        "runs": run_rows,
        "rows": aligned.describe(),
        "thresholds": list(thresholds),
        "rule_threshold": rule_threshold,
        "excess_threshold": excess_threshold if baseline else None,
        "baseline": "random rotation of the other run's units (Gurnee et al. 2024)" if baseline else None,
        "pairs": out_pairs,
        "_excess": [e / n_others for e in excess_sum] if baseline else None,
        "_best": [b / n_others for b in best_sum],
        "_freq": freq,
    }


def _side(m: Matching, a_side: bool) -> dict[str, Any]:
    def rounded(v: np.ndarray) -> list[Any]:
        return [None if not np.isfinite(x) else round(float(x), 4) for x in v]

    if a_side:
        return {"best": m.best.tolist(), "best_score": rounded(m.best_score), "matched": m.matched.tolist(), "matched_score": rounded(m.matched_score),
                "same_index": rounded(m.same_index)}
    matched_b = np.full(len(m.best_b), -1, dtype=np.int64)
    score_b = np.full(len(m.best_b), np.nan, dtype=np.float32)
    ok = m.matched >= 0
    matched_b[m.matched[ok]] = np.flatnonzero(ok)
    score_b[m.matched[ok]] = m.matched_score[ok]
    return {"best": m.best_b.tolist(), "best_score": rounded(m.best_b_score), "matched": matched_b.tolist(), "matched_score": rounded(score_b)}


def _check_out(out: Path) -> None:
    """Refuse a non-empty folder that is not a comparison (nothing is deleted there)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / COMPARE_FILE).exists())):
        raise BadInputError(f"{out} exists and is not a comparison folder (no {COMPARE_FILE}); choose another --out")


def _clear(out: Path) -> None:
    """Drop the files of an earlier comparison written into ``out`` (it may have compared other runs)."""
    for sub, pattern in ((PAIRS_DIR, "*.json"), ("runs", "*.json"), ("ablation", "*.json"), (PLOTS_DIR, "*.png")):
        for old in (out / sub).glob(pattern):
            old.unlink()


def _write_compact(path: Path, data: Any) -> None:
    """Per-latent arrays: one JSON line (indenting them would give a line per number)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":")) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def _write(out: Path, runs: list[_Run], pairs: list[_Pair], report: dict[str, Any], arrays: dict[str, Any], rule_threshold: float,
           excess_threshold: float) -> None:
    from ._plots import plot_best_scores, plot_shared_vs_frequency

    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    freq, excess, best = arrays["_freq"], arrays["_excess"], arrays["_best"]
    plots = []
    for p, entry in zip(pairs, report["pairs"]):
        a, b = runs[p.i], runs[p.j]
        data: dict[str, Any] = {"a": a.name, "b": b.name, "a_path": str(a.path), "b_path": str(b.path),
                                "a_firing_frequency": [round(float(x), 6) for x in freq[p.i]],
                                "b_firing_frequency": [round(float(x), 6) for x in freq[p.j]]}
        for kind, m in p.matches.items():
            data[f"a_{kind}"] = _side(m, True)
            data[f"b_{kind}"] = _side(m, False)
        pb = _paulo_belrose(a, b, p, rule_threshold)
        if pb is not None:
            data["a_shared"] = pb[0].astype(int).tolist()
        if p.base_a is not None:
            data["a_baseline"] = [round(float(x), 4) for x in p.base_a]
            data["b_baseline"] = [round(float(x), 4) for x in p.base_b]
        _write_compact(out / PAIRS_DIR / pair_file(p.i, p.j), data)
        tag = f"{p.i}-{p.j}"
        plots.append(str(plot_best_scores(out / PLOTS_DIR / f"best_match_{tag}.png", a.name, b.name, p.matches, report["thresholds"]).relative_to(out)))
        shared_act = np.nan_to_num(p.matches["activation"].matched_score, nan=-1) > rule_threshold
        shared_dir = pb[0] if pb is not None else None
        plots.append(str(plot_shared_vs_frequency(out / PLOTS_DIR / f"shared_vs_frequency_{tag}.png", a.name, b.name, freq[p.i],
                                                  shared_act, shared_dir, rule_threshold).relative_to(out)))
    for k, r in enumerate(runs):
        data = {"name": r.name, "path": str(r.path), "firing_frequency": [round(float(x), 6) for x in freq[k]],
                "mean_best_correlation": [round(float(x), 4) for x in best[k]]}
        if excess is not None:
            data["excess_correlation"] = [round(float(x), 4) for x in excess[k]]
            data["universal"] = [int(x) for x in np.flatnonzero(excess[k] > excess_threshold)]
        _write_compact(out / "runs" / f"{k}.json", data)
    report["plots"] = plots
    write_json(out / COMPARE_FILE, report)
