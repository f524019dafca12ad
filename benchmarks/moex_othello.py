"""MoE-X claim (1) on a testbed that can decide it: Othello by random legal play, several seeds.

Yang et al. 2025 (arXiv 2503.07639) Table 1 scores MLP hidden units of chess models with Karvonen
et al.'s coverage/reconstruction; at CPU scale our chess models never track the board (see
docs/methods/moex.md), so the metrics there are at chance. This benchmark uses Othello
(``featureforge_testbeds.othello``, 4x4 by default) where a 3-layer model learns legal moves in a few
minutes and its residual stream holds the board far better than an untrained model's. Per seed it
trains GELU, Switch and MoE-X at equal active parameters, the router-only and ReLU-only ablations,
probes an untrained model of the same shape, fits a TopK SAE to the GELU MLP (through
featureforge) and, with ``--upcycle``, fine-tunes MoE-X upcycled from that seed's GELU model
(paper Table 4). Unit metrics use the board classes empty / mover's / opponent's.

Prints one JSON object; writes it to ``--out`` after every model, and a rerun with the same
``--out`` and settings skips the runs already there (so a killed grid resumes).

    python benchmarks/moex_othello.py --upcycle --out benchmarks/results/moex_othello/moex_othello.json
    python benchmarks/moex_othello.py --quick        # seconds: the test's smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moex_chess import log, probe_layers, sae_baseline  # noqa: E402
from moex_text import spread  # noqa: E402

FULL = dict(size=4, n_layer=3, d_model=64, n_head=4, steps=3000, batch_size=32, lr=3e-3, train_games=50000, val_games=200,
            eval_games=300, sae_games=3000, sae_width=1024, sae_k=16, sae_batch=256, sae_epochs=5.0, upcycle_steps=1500, upcycle_noise=0.01)
QUICK = dict(size=4, n_layer=2, d_model=16, n_head=2, steps=6, batch_size=8, lr=3e-3, train_games=64, val_games=8,
             eval_games=24, sae_games=16, sae_width=64, sae_k=4, sae_batch=32, sae_epochs=1.0, upcycle_steps=3, upcycle_noise=0.01)
KINDS = ("gelu", "switch", "moex", "router_only", "relu_only")
METRICS = ("val_loss", "legal_top1", "coverage", "reconstruction", "linear_probe_f1_residual", "linear_probe_f1_colour")
COLOUR = (1, 2)  # mover's / opponent's disc: the part of the board that flips


def apply_sets(s: dict, items: list[str], prog: str) -> dict:
    """Apply ``--set KEY=VALUE`` overrides to the settings ``s`` (each value cast to the setting's type)."""
    for item in items:
        key, _, value = item.partition("=")
        if key not in s or not value:
            raise SystemExit(f"{prog} --set {item!r}: use KEY=VALUE with KEY one of {', '.join(s)}")
        s[key] = type(s[key])(value)
    return s


def model_config(s: dict, mlp: str):
    from featureforge_testbeds import chess_lm, othello

    return chess_lm.LMConfig(mlp=mlp, n_layer=s["n_layer"], d_model=s["d_model"], n_head=s["n_head"],
                             context=othello.context_for(s["size"]), vocab_size=othello.vocab_size(s["size"]))


def evaluate(model, games: dict, s: dict, tensors: dict) -> dict:
    from featureforge_testbeds import chess_lm, othello

    return {"val_loss": chess_lm.validation_loss(model, tensors["val"]), "legal_top1": othello.legal_top1(model, games["eval"]),
            "active_mlp_params": model.active_mlp_params(),
            **probe_layers(model, games["eval"], n_classes=othello.N_CLASSES, colour_classes=COLOUR)}


def timed_evaluate(model, games: dict, s: dict, tensors: dict) -> dict:
    start = time.perf_counter()
    return evaluate(model, games, s, tensors) | {"eval_seconds": time.perf_counter() - start}


def train(model, s: dict, tensors: dict, seed: int, steps: int) -> dict:
    from featureforge_testbeds import chess_lm

    r = chess_lm.train_lm(model, tensors["train"], tensors["val"], steps=steps, batch_size=s["batch_size"], lr=s["lr"], seed=seed)
    return {"steps": steps, "train_loss": r.train_loss, "train_seconds": r.seconds}


PROBES = ("linear_probe_f1_residual", "linear_probe_f1_colour")


def layer_gaps(row: dict, base: dict, probe: str) -> dict[str, float]:
    """Per layer: ``row``'s residual probe F1 minus the untrained model's at the same layer."""
    return {i: m[probe] - base["layers"][i][probe] for i, m in row.get("layers", {}).items() if probe in m}


def summarise(runs: dict) -> dict:
    """Per row: mean/std/min/max over seeds of every metric, and the probe gap over the untrained model (paired by seed):
    of the mean over layers (``probe_gap_*``) and of each layer's residual (``probe_gap_*_layer{i}``)."""
    base = runs.get("untrained", {})
    table = {}
    for name, per_seed in runs.items():
        row = {m: spread([r[m] for r in per_seed.values()]) for m in METRICS if all(m in r for r in per_seed.values())}
        for probe in PROBES:
            gaps = [r[probe] - base[seed][probe] for seed, r in per_seed.items() if probe in r and seed in base]
            if gaps:
                row[probe.replace("linear_probe_f1", "probe_gap")] = spread(gaps)
            per_layer = [layer_gaps(r, base[seed], probe) for seed, r in per_seed.items() if seed in base]
            for i in sorted(set.intersection(*(set(g) for g in per_layer)) if per_layer else ()):
                row[f"{probe.replace('linear_probe_f1', 'probe_gap')}_layer{i}"] = spread([g[i] for g in per_layer])
        table[name] = row
    return table


def criteria(runs: dict, legal_bar: float = 0.95, gap_bar: float = 0.15) -> dict:
    """Issue #16's bar per trained model and seed: (a) legal top-1 >= 0.95 on held-out games; (b) a residual probe gap
    over the untrained model of the same seed >= 0.15 F1. The gap is taken layer by layer (trained layer i minus
    untrained layer i) and reported at the best layer (the criterion: the board is held somewhere in the residual
    stream, as Li et al. and Nanda et al. report the layer where probes peak), the last layer and the mean over
    layers, for the full board and for the colour classes."""
    base = runs.get("untrained", {})
    out = {}
    for name, per_seed in runs.items():
        for seed, r in per_seed.items():
            if name == "untrained" or "legal_top1" not in r or seed not in base:
                continue
            row = {"legal_top1": r["legal_top1"], "a_met": r["legal_top1"] >= legal_bar}
            for probe, short in zip(PROBES, ("full", "colour")):
                gaps = layer_gaps(r, base[seed], probe)
                best = max(gaps, key=gaps.get)
                row[f"gap_{short}_best_layer"], row[f"best_layer_{short}"] = gaps[best], int(best)
                row[f"gap_{short}_last_layer"] = gaps[str(max(int(i) for i in gaps))]
                row[f"gap_{short}_mean_layers"] = r[probe] - base[seed][probe]
                row[f"b_met_{short}"] = gaps[best] >= gap_bar
            out.setdefault(name, {})[seed] = row
    return out


def paired(runs: dict, a: str, b: str, metric: str) -> dict | None:
    """``a - b`` per seed (same seed = same data order) for the verdict."""
    seeds = sorted(sd for sd in set(runs.get(a, {})) & set(runs.get(b, {})) if metric in runs[a][sd] and metric in runs[b][sd])
    if not seeds:
        return None
    diffs = [runs[a][sd][metric] - runs[b][sd][metric] for sd in seeds]
    return {"diffs": diffs, **spread(diffs), "same_sign_all_seeds": bool(all(d > 0 for d in diffs) or all(d < 0 for d in diffs))}


PAIRS = (("moex", "gelu"), ("moex", "switch"), ("switch", "gelu"), ("moex", "sae_topk_on_gelu"), ("router_only", "gelu"),
         ("relu_only", "gelu"), ("router_only", "moex"), ("relu_only", "moex"), ("moex_upcycled", "moex"))


def finish(result: dict) -> dict:
    """Add the over-seeds table and the paired differences behind the verdict."""
    result["table"] = summarise(result["runs"])
    result["criteria"] = criteria(result["runs"])
    result["verdict_inputs"] = {f"{a}-{b}": {m: paired(result["runs"], a, b, m) for m in ("coverage", "reconstruction", "val_loss", "legal_top1")}
                                for a, b in PAIRS}
    return result


def merge(paths: list[str], out: Path) -> dict:
    """Combine per-seed result files with identical settings into one result."""
    parts = [json.loads(Path(x).read_text()) for x in paths]
    if any(part["settings"] != parts[0]["settings"] for part in parts):
        raise SystemExit("moex_othello --merge: the files were run with different settings; merge only runs of one grid")
    result = {k: v for k, v in parts[0].items() if k not in ("runs", "table", "verdict_inputs", "criteria", "provenance")}
    result["runs"], result["merged_from"], result["seconds"] = {}, paths, sum(part.get("seconds", 0) for part in parts)
    result["merged_provenance"] = [part.get("provenance") for part in parts]
    for part in parts:
        for name, per_seed in part["runs"].items():
            result["runs"].setdefault(name, {}).update(per_seed)
    finish(result)
    provenance.emit(result, out)
    return result


def main(argv=None) -> dict:
    from featureforge_testbeds import chess_lm, othello

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (seconds)")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of MLP kinds")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="training steps per model")
    p.add_argument("--size", type=int, default=None, help="Othello board side (4 or 6)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting (e.g. batch_size=64, lr=5e-3)")
    p.add_argument("--no-sae", action="store_true", help="skip the TopK SAE on the GELU MLP")
    p.add_argument("--upcycle", action="store_true", help="also fine-tune MoE-X upcycled from each seed's GELU model (paper Table 4)")
    p.add_argument("--workdir", default=None, help="SAE stores and runs (default: a temporary folder)")
    provenance.add_out_argument(p, "moex_othello", help="rewritten after every model; a rerun with the same --out resumes from it")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", default=None, help="comma list of result files (e.g. one per seed, run in parallel) to combine into --out; trains nothing")
    args = p.parse_args(argv)
    out = provenance.out_path(args.out, "moex_othello")
    if args.merge:
        return merge(args.merge.split(","), out)
    torch.set_num_threads(args.threads)
    s = dict(QUICK if args.quick else FULL)
    if args.steps:
        s["steps"] = args.steps
    if args.size:
        s["size"] = args.size
    apply_sets(s, args.set, "moex_othello")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="moex-othello-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    split = {name: othello.make_games(s[f"{name}_games"], seed=1000 + i, size=s["size"]) for i, name in enumerate(("train", "val", "eval", "sae"))}
    ctx = othello.context_for(s["size"])
    tensors = {"train": chess_lm.pad_games(split["train"], ctx), "val": chess_lm.pad_games(split["val"], ctx)}
    log("games ready", {k: len(v) for k, v in split.items()}, f"{time.perf_counter() - t0:.0f}s")
    result: dict = {"benchmark": "moex_othello", "quick": args.quick, "settings": s, "torch_threads": torch.get_num_threads(), "runs": {}}
    if out.exists():
        old = json.loads(out.read_text())
        if old.get("settings") == s:
            result["runs"] = old.get("runs", {})

    def flush() -> None:
        result["seconds"] = round(time.perf_counter() - t0, 1)
        finish(result)
        provenance.save(result, out)

    def record(name: str, seed: int, row: dict) -> None:
        result["runs"].setdefault(name, {})[str(seed)] = row
        log(name, "seed", seed, {m: round(row[m], 3) for m in METRICS if m in row})
        flush()

    def done(name: str, seed: int) -> bool:
        return str(seed) in result["runs"].get(name, {})

    for seed in (int(x) for x in args.seeds.split(",")):
        if not done("untrained", seed):
            torch.manual_seed(seed)
            record("untrained", seed, evaluate(chess_lm.ChessLM(model_config(s, "gelu")), split, s, tensors))
        gelu = None
        for kind in args.kinds.split(","):
            needs_gelu = kind == "gelu" and ((not args.no_sae and not done("sae_topk_on_gelu", seed)) or (args.upcycle and not done("moex_upcycled", seed)))
            if done(kind, seed) and not needs_gelu:
                continue
            torch.manual_seed(seed)
            model = chess_lm.ChessLM(model_config(s, kind))
            info = train(model, s, tensors, seed, s["steps"])
            if not done(kind, seed):
                record(kind, seed, info | timed_evaluate(model, split, s, tensors))
            if kind == "gelu":
                gelu = model
        if gelu is not None and not args.no_sae and not done("sae_topk_on_gelu", seed):
            (workdir / f"sae_seed{seed}").mkdir(exist_ok=True)
            start = time.perf_counter()
            sae = sae_baseline(gelu, s, split["sae"], split["eval"], workdir / f"sae_seed{seed}", n_classes=othello.N_CLASSES)
            record("sae_topk_on_gelu", seed, sae | {"seconds": time.perf_counter() - start})
        if gelu is not None and args.upcycle and not done("moex_upcycled", seed):
            model = chess_lm.upcycle_lm(gelu, "moex", noise=s["upcycle_noise"], seed=seed)
            before = chess_lm.validation_loss(model, tensors["val"])
            info = train(model, s, tensors, seed, s["upcycle_steps"])
            record("moex_upcycled", seed, info | {"val_loss_at_upcycling": before, "dense_steps": s["steps"]} | timed_evaluate(model, split, s, tensors))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    finish(result)
    provenance.emit(result, out)
    return result


if __name__ == "__main__":
    main()
