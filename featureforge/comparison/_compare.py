"""``featureforge compare``: which latents of several dictionaries are the same feature.

For every pair of runs (A, B), each of A's latents gets its best B-latent and its one-to-one
(Hungarian) partner under up to three similarities:

- **decoder** cosine of the decoder rows and **encoder** cosine of the encoder rows (runs on one
  store only: directions of different models live in different spaces);
- **activation** Pearson correlation of the codes over the same eval rows (any runs whose rows
  line up: one store, or stores of different models over the same tokens).

Rules from the literature, reported beside the raw scores:

- Paulo & Belrose 2025 ("Sparse autoencoders trained on the same data learn different features"):
  a latent is *shared* when its decoder-Hungarian partner matches above ``rule_threshold`` (0.7)
  by decoder cosine and that same pair by encoder cosine too.
- Gurnee et al. 2024 ("Universal Neurons in GPT2 Language Models"): a unit's *excess correlation*
  is its best activation correlation with B's units minus its best with a random rotation of B's
  units (the baseline); averaged over the other runs, units above ``excess_threshold`` (0.5) are
  *universal*.

Everything is streamed: similarity matrices in row blocks (``_match``), correlations in one pass
over the rows per ``memory`` floats of accumulators (``_correlation``), so dictionaries far larger
than memory-sized dense matrices are compared exactly up to the sparse matching's candidates.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BadInputError, OptionError
from ..files import atomic_write, write_json
from ..store import ActivationStore, auto_batch_size, open_store
from ._match import DENSE_LIMIT, BlockMatcher, Matching, cosine_blocks
from ._rows import AlignedRows, aligned_rows

__all__ = ["COMPARE_FILE", "DEFAULT_THRESHOLDS", "PAIRS_DIR", "compare", "pair_file"]

COMPARE_FILE = "compare.json"
PAIRS_DIR = "pairs"
PLOTS_DIR = "plots"
DEFAULT_THRESHOLDS = (0.5, 0.7, 0.9)
#: Paulo & Belrose's cosine threshold for a shared latent.
RULE_THRESHOLD = 0.7
#: Gurnee et al.'s excess correlation above which a unit is universal.
EXCESS_THRESHOLD = 0.5
#: float64 accumulator entries per pass over the rows (256 MiB).
DEFAULT_MEMORY = 1 << 25
#: Trainers whose latents are the site's own units: latent i is the same unit in every run of one site.
UNIT_TRAINERS = ("identity", "neurons")
#: Largest unit count for which the rotation baseline is computed unless asked for.
AUTO_BASELINE_MAX = 2048


@dataclass
class _Run:
    name: str
    path: Path
    dictionary: Any
    config: dict[str, Any]
    store: ActivationStore
    moments: Any = None
    rotated: Any = None  # Moments of the rotated codes (baseline)
    rotation: Any = None

    @property
    def m(self) -> int:
        return int(self.dictionary.d_dict)


@dataclass
class _Pair:
    i: int
    j: int
    directions: bool
    matches: dict[str, Matching] = field(default_factory=dict)
    #: [m_a] A's best correlation with rotated B; [m_b] B's best with rotated A.
    base_a: np.ndarray | None = None
    base_b: np.ndarray | None = None


def pair_file(i: int, j: int) -> str:
    """File name of pair (i, j)'s per-latent matches under ``PAIRS_DIR``."""
    return f"{i}-{j}.json"


def _expand(runs: Sequence[str | os.PathLike]) -> list[Path]:
    from ..evaluation._sweeps import is_sweep, sweep_members

    out: list[Path] = []
    for run in runs:
        path = Path(run)
        if not path.exists():
            raise BadInputError(f"run folder {path} does not exist; pass run folders written by featureforge train")
        out.extend(sweep_members(path) if is_sweep(path) else [path])
    return out


def _names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def _stores(paths: list[Path], configs: list[dict[str, Any]], store: Any) -> list[ActivationStore]:
    if store is None:
        given: list[Any] = []
        for path, cfg in zip(paths, configs):
            url = (cfg.get("store") or {}).get("url")
            if not url or not (Path(url).exists() or "://" in str(url)):
                raise BadInputError(f"run {path} records no store that exists here ({url!r}); pass --store STORE")
            given.append(url)
    elif isinstance(store, (str, os.PathLike, ActivationStore)):
        given = [store] * len(paths)
    else:
        given = list(store)
        if len(given) == 1:
            given = given * len(paths)
        elif len(given) != len(paths):
            raise OptionError(f"{len(given)} stores for {len(paths)} runs; pass one --store for all runs or one per run, in the runs' order")
    opened: dict[str, ActivationStore] = {}
    out = []
    for s in given:
        if isinstance(s, ActivationStore):
            out.append(s)
            continue
        key = str(s)
        if key not in opened:
            opened[key] = open_store(key)
        out.append(opened[key])
    return out


def _load(paths: list[Path], store: Any) -> list[_Run]:
    from ..dictionary import load
    from ..run import RunConfig

    configs = [RunConfig.read(p).to_dict() for p in paths]
    stores = _stores(paths, configs, store)
    runs = []
    for path, name, cfg, st in zip(paths, _names(paths), configs, stores):
        if int(cfg["d_in"]) != st.d_in:
            raise BadInputError(f"run {path} reads rows of width {cfg['d_in']} but store {st.url} has width {st.d_in}; pass the store of its site")
        runs.append(_Run(name, path, load(path), cfg, st))
    return runs


def compare(
    runs: Sequence[str | os.PathLike],
    *,
    store: str | os.PathLike | ActivationStore | Sequence[Any] | None = None,
    out: str | os.PathLike | None = None,
    rows: int | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    rule_threshold: float = RULE_THRESHOLD,
    excess_threshold: float = EXCESS_THRESHOLD,
    baseline: bool | None = None,
    batch_size: int = 0,
    memory: int = DEFAULT_MEMORY,
    dense_limit: int = DENSE_LIMIT,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Match the latents of every pair of ``runs``; returns the report (``compare.json``).

    ``runs`` are run folders (a sweep folder stands for its members). ``store`` is one store for
    all runs, one per run (stores of different models over the same tokens), or None for each
    run's recorded store. ``rows`` caps the eval rows (default: the runs' held-out rows when they
    share them, else the store's first 65,536). ``baseline`` computes Gurnee et al.'s rotated
    baseline (default: when every dictionary has at most 2,048 units). ``out`` is the folder
    written: ``compare.json``, ``pairs/I-J.json`` (per-latent matches) and ``plots/``.
    """
    import torch

    paths = _expand(runs)
    if len(paths) < 2:
        raise BadInputError(f"compare needs at least two runs, got {len(paths)}; pass two or more run folders (or a sweep folder)")
    for name, value in (("--rule-threshold", rule_threshold), ("--excess-threshold", excess_threshold), *((f"threshold {t}", t) for t in thresholds)):
        if not -1.0 <= float(value) <= 1.0:
            raise OptionError(f"{name} must lie in [-1, 1], got {value}")
    if memory < 1:
        raise OptionError(f"memory must be positive, got {memory}")
    if out is not None:
        _check_out(Path(out))
    loaded = _load(paths, store)
    aligned, which = aligned_rows([r.store for r in loaded], [r.config for r in loaded], rows)
    if baseline is None:
        baseline = max(r.m for r in loaded) <= AUTO_BASELINE_MAX
    pairs = [_Pair(i, j, directions=which[i] == which[j]) for i in range(len(loaded)) for j in range(i + 1, len(loaded))]
    with torch.no_grad():
        for pair in pairs:
            if pair.directions:
                _direction_matches(loaded[pair.i], loaded[pair.j], pair, memory, dense_limit)
        _activation_matches(loaded, aligned, which, pairs, bool(baseline), memory, dense_limit, batch_size, seed, progress)
    report = _report(loaded, aligned, pairs, thresholds, rule_threshold, excess_threshold, bool(baseline))
    arrays = {key: report.pop(key) for key in ("_freq", "_excess", "_best")}
    if out is not None:
        report["out"] = str(out)
        _write(Path(out), loaded, pairs, report, arrays, rule_threshold, excess_threshold)
    return report


# -- similarities ------------------------------------------------------------------------------
def _direction_matches(a: _Run, b: _Run, pair: _Pair, memory: int, dense_limit: int) -> None:
    kinds = {"decoder": (a.dictionary.decoder_directions, b.dictionary.decoder_directions)}
    enc_a, enc_b = a.dictionary.encoder_directions, b.dictionary.encoder_directions
    if enc_a is not None and enc_b is not None:
        kinds["encoder"] = (enc_a, enc_b)
    for kind, (wa, wb) in kinds.items():
        matcher = BlockMatcher(a.m, b.m, dense_limit=dense_limit)
        for lo, block in cosine_blocks(wa, wb, memory):
            matcher.add(lo, block)
        pair.matches[kind] = matcher.result()


def _tasks(runs: list[_Run], pairs: list[_Pair], baseline: bool, memory: int) -> list[list[tuple[Any, ...]]]:
    """Accumulator blocks, packed into passes of at most ``memory`` entries each.

    A task is (pair, kind, lo, hi): rows lo:hi of A's latents (``ab``: against B; ``a_rotb``:
    against rotated B) or of rotated A's units (``rota_b``: against B).
    """
    tasks = []
    for p in pairs:
        ma, mb = runs[p.i].m, runs[p.j].m
        step = max(1, memory // max(mb, 1))
        for kind in ("ab", "a_rotb", "rota_b") if baseline else ("ab",):
            tasks.extend((p, kind, lo, min(ma, lo + step)) for lo in range(0, ma, step))
    passes: list[list[tuple[Any, ...]]] = [[]]
    used = 0
    for t in tasks:
        size = (t[3] - t[2]) * runs[t[0].j].m
        if passes[-1] and used + size > memory:
            passes.append([])
            used = 0
        passes[-1].append(t)
        used += size
    return passes


def _activation_matches(runs: list[_Run], aligned: AlignedRows, which: list[int], pairs: list[_Pair], baseline: bool,
                        memory: int, dense_limit: int, batch_size: int, seed: int, progress: bool) -> None:
    import torch

    from ..progress import progress_bar
    from ._correlation import CrossBlock, Moments, random_rotation

    for k, r in enumerate(runs):
        r.moments = Moments(r.m)
        if baseline:
            r.rotated = Moments(r.m)
            r.rotation = random_rotation(r.m, seed * 1000 + k)
    passes = _tasks(runs, pairs, baseline, memory)
    batch = auto_batch_size(max(r.dictionary.d_in for r in runs), max(r.m for r in runs), batch_size)
    matchers: dict[tuple[int, str], BlockMatcher] = {}
    for p in pairs:
        ma, mb = runs[p.i].m, runs[p.j].m
        matchers[(id(p), "ab")] = BlockMatcher(ma, mb, dense_limit=dense_limit)
        if baseline:
            matchers[(id(p), "a_rotb")] = BlockMatcher(ma, mb, dense_limit=0, candidates=1)
            matchers[(id(p), "rota_b")] = BlockMatcher(ma, mb, dense_limit=0, candidates=1)
    total = aligned.rows.rows * len(passes)
    with progress_bar(total, "compare", enabled=None if progress else False) as bar:
        for number, tasks in enumerate(passes):
            blocks = [CrossBlock(lo, hi, runs[p.j].m) for p, _, lo, hi in tasks]
            for acts in aligned.blocks(batch):
                centred, rotated = [], []
                for k, r in enumerate(runs):
                    x = torch.from_numpy(acts[which[k]]).float()
                    codes = r.dictionary.encode(x).float()
                    c = r.moments.centre(codes)
                    rc = c @ r.rotation if baseline else None
                    if number == 0:
                        r.moments.update(codes, c)
                        if baseline:
                            r.rotated.update(rc, rc)
                    centred.append(c)
                    rotated.append(rc)
                for (p, kind, _, _), blk in zip(tasks, blocks):
                    a = rotated[p.i] if kind == "rota_b" else centred[p.i]
                    b = rotated[p.j] if kind == "a_rotb" else centred[p.j]
                    blk.update(a, b)
                bar.update(len(acts[0]))
            for (p, kind, lo, _), blk in zip(tasks, blocks):
                a, b = runs[p.i], runs[p.j]
                ma = a.rotated if kind == "rota_b" else a.moments
                mb = b.rotated if kind == "a_rotb" else b.moments
                matchers[(id(p), kind)].add(lo, blk.correlation(ma, mb))
    for p in pairs:
        p.matches["activation"] = matchers[(id(p), "ab")].result()
        if baseline:
            p.base_a = matchers[(id(p), "a_rotb")].result().best_score
            p.base_b = matchers[(id(p), "rota_b")].result().best_b_score


# -- the report --------------------------------------------------------------------------------
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
    for sub, pattern in ((PAIRS_DIR, "*.json"), ("runs", "*.json"), (PLOTS_DIR, "*.png")):
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
