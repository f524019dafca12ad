"""Learning curve of one Othello testbed model: legal-move top-1 and per-layer residual probe gaps at checkpoints.

Sizes the budget of ``moex_othello.py`` (issue #16's bar: legal top-1 >= 0.95 on held-out games, a residual
probe gap >= 0.15 F1 over an untrained model of the same shape): one model, the untrained baseline, and
the bar's two measures at fractions of the run. The run keeps one cosine schedule over ``--steps``, so an
early checkpoint is a model at a high learning rate, not a shorter run. Prints one JSON object and
writes it to ``--out`` after every checkpoint.

    python benchmarks/moex_othello_curve.py --steps 3000 --out benchmarks/results/moex_othello_curve/4x4.json
    python benchmarks/moex_othello_curve.py --size 6 --steps 5000 --set batch_size=64 --set train_games=60000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moex_othello import COLOUR, FULL, apply_sets, model_config  # noqa: E402

import provenance  # noqa: E402


def probe(model, games, n_layer: int) -> dict:
    from featureforge_testbeds import othello
    from featureforge_testbeds.board_probe import collect_at_dots, linear_probe_f1

    out = {"legal_top1": othello.legal_top1(model, games), "layers": {}}
    for i in range(n_layer):
        acts, boards = collect_at_dots(model, games, f"blocks.{i}")
        out["layers"][str(i)] = {"full": linear_probe_f1(acts, boards, n_classes=othello.N_CLASSES),
                                 "colour": linear_probe_f1(acts, boards, n_classes=othello.N_CLASSES, classes=COLOUR)}
    return out


def gaps(point: dict, base: dict) -> dict:
    return {f"gap_{k}_layer{i}": m[k] - base["layers"][i][k] for i, m in point["layers"].items() for k in ("full", "colour")}


def main(argv=None) -> dict:
    from featureforge_testbeds import chess_lm, othello

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="gelu", help="MLP kind (gelu, switch, moex, router_only, relu_only)")
    p.add_argument("--size", type=int, default=FULL["size"])
    p.add_argument("--steps", type=int, default=FULL["steps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checks", default="0.2,0.4,0.6,0.8,1.0", help="fractions of --steps at which to measure")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a moex_othello setting (batch_size, lr, d_model, ...)")
    provenance.add_out_argument(p, "moex_othello_curve", help="rewritten after every checkpoint")
    args = p.parse_args(argv)
    out = provenance.out_path(args.out, "moex_othello_curve")
    torch.set_num_threads(1)
    s = apply_sets(dict(FULL, size=args.size, steps=args.steps), args.set, "moex_othello_curve")
    t0 = time.perf_counter()
    train, val, test = (othello.make_games(s[f"{name}_games"], seed=1000 + i, size=s["size"]) for i, name in enumerate(("train", "val", "eval")))
    ctx = othello.context_for(s["size"])
    result: dict = {"benchmark": "moex_othello_curve", "kind": args.kind, "seed": args.seed, "settings": s,
                    "games_seconds": time.perf_counter() - t0, "points": []}
    torch.manual_seed(args.seed)
    result["untrained"] = base = probe(chess_lm.ChessLM(model_config(s, args.kind)), test, s["n_layer"])
    torch.manual_seed(args.seed)
    model = chess_lm.ChessLM(model_config(s, args.kind))
    # train_lm calls log every 50 steps (and at the last): measure at the 50-step mark nearest each fraction.
    marks = {min(args.steps - 1, round(float(f) * args.steps / 50) * 50) for f in args.checks.split(",")}
    clock = {"start": 0.0, "eval": 0.0}

    def log(step: int, ce: float) -> None:
        if step == 0:  # the clock starts after the first step, past train_lm's one-off optimiser set-up
            clock["start"] = time.perf_counter()
        if step not in marks and step != args.steps - 1:
            return
        start = time.perf_counter()
        point = probe(model, test, s["n_layer"])
        model.train()
        point |= {"step": step + 1, "train_loss": ce, "train_seconds": start - clock["start"] - clock["eval"], **gaps(point, base)}
        clock["eval"] += time.perf_counter() - start
        result["points"].append(point)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in point.items() if k != "layers"}), file=sys.stderr, flush=True)
        provenance.save(result, out)

    r = chess_lm.train_lm(model, chess_lm.pad_games(train, ctx), chess_lm.pad_games(val, ctx), steps=args.steps,
                          batch_size=s["batch_size"], lr=s["lr"], seed=args.seed, log=log)
    result |= {"val_loss": r.val_loss, "train_seconds": r.seconds - clock["eval"], "eval_seconds": clock["eval"]}
    provenance.emit(result, out)
    return result


if __name__ == "__main__":
    main()
