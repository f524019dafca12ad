"""MoE-X chess benchmark: GELU vs Switch MoE vs MoE-X character models on generated games.

Yang et al. 2025 (arXiv 2503.07639) Table 1 trains GPT-2-style models on chess PGN text and scores
each model's MLP hidden units with Karvonen et al.'s board-state metrics (coverage,
reconstruction); a TopK SAE on the GELU model's MLP is the post-hoc baseline. This script does the
same at a scale that fits a 2-core CPU: games from ``featureforge_moex.chess_games``, models from
``chess_lm`` at equal active MLP parameters, metrics from ``board_probe`` on every layer's
``blocks.i.mlp.hidden``, the SAE trained through featureforge (cache -> train topk -> load).

Prints one JSON object and writes it to ``--out`` after every model, so a cut-off run still leaves
its finished models' numbers. Models are saved under ``--workdir/models/KIND`` (safetensors +
JSON, loadable by the ``chess-lm`` activation source) and reused when their config matches.

    python benchmarks/moex_chess.py                  # full run (about an hour on 2 busy cores)
    python benchmarks/moex_chess.py --ablations      # also router_only and relu_only
    python benchmarks/moex_chess.py --quick          # seconds: the test's smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PAPER_TABLE1 = {"gelu": {"coverage": 0.356, "reconstruction": 0.608},
                "sae_topk_on_gelu": None,
                "switch": {"coverage": 0.424, "reconstruction": 0.734},
                "moex": {"coverage": 0.428, "reconstruction": 0.840}}

FULL = dict(n_layer=3, d_model=96, n_head=4, context=256, steps=600, batch_size=16, train_games=6000,
            val_games=200, eval_games=400, sae_games=300, sae_width=1536, sae_k=32)
QUICK = dict(n_layer=2, d_model=32, n_head=2, context=128, steps=8, batch_size=8, train_games=48,
             val_games=8, eval_games=24, sae_games=16, sae_width=256, sae_k=8)


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def games_for(name: str, n: int, seed: int, context: int, workdir: Path) -> list:
    """Generated games, cached in the workdir (generation takes minutes on a busy machine)."""
    from featureforge_moex import chess_games

    path = workdir / f"games_{name}_{n}_{seed}_{context}.npz"
    if path.exists():
        return chess_games.load_games(path)
    games = chess_games.make_games(n, seed=seed, max_chars=context)
    chess_games.save_games(games, path)
    return games


def train_or_load(kind: str, s: dict, games: dict, workdir: Path, seed: int) -> tuple[object, dict]:
    from featureforge_moex import chess_lm

    cfg = chess_lm.LMConfig(mlp=kind, n_layer=s["n_layer"], d_model=s["d_model"], n_head=s["n_head"], context=s["context"])
    folder = workdir / "models" / kind
    meta_path = folder / "train.json"
    want = {"config": dataclasses.asdict(cfg), "steps": s["steps"], "batch_size": s["batch_size"], "train_games": s["train_games"], "seed": seed}
    if meta_path.exists() and json.loads(meta_path.read_text()).get("want") == want:
        log(kind, "reusing", folder)
        return chess_lm.load_lm(folder), json.loads(meta_path.read_text())["result"]
    torch.manual_seed(seed)
    model = chess_lm.ChessLM(cfg)
    result = chess_lm.train_lm(model, games["train"], games["val"], steps=s["steps"], batch_size=s["batch_size"], seed=seed,
                               log=lambda step, ce: log(kind, "step", step, "ce", round(ce, 4)))
    out = dataclasses.asdict(result) | {"params": sum(p.numel() for p in model.parameters()), "active_mlp_params": model.active_mlp_params()}
    chess_lm.save_lm(model, folder)
    meta_path.write_text(json.dumps({"want": want, "result": out}, indent=2))
    return model, out


def probe_layers(model, eval_games, n_classes: int = 13, colour_classes: tuple[int, ...] | None = None) -> dict:
    """Karvonen's unit metrics of every layer's ``mlp.hidden`` and a ridge probe of its residual stream.

    ``colour_classes`` adds ``linear_probe_f1_colour``: the probe scored on those classes only.
    """
    from featureforge_moex.board_probe import board_metrics, collect_at_dots, linear_probe_f1

    per_layer = {}
    keys = ["coverage", "reconstruction", "linear_probe_f1_residual"]
    for i in range(model.cfg.n_layer):
        acts, boards = collect_at_dots(model, eval_games, f"blocks.{i}.mlp.hidden")
        m = board_metrics(acts, boards, n_classes)
        residual = collect_at_dots(model, eval_games, f"blocks.{i}")[0]
        m["linear_probe_f1_residual"] = linear_probe_f1(residual, boards, n_classes=n_classes)
        if colour_classes is not None:
            m["linear_probe_f1_colour"] = linear_probe_f1(residual, boards, n_classes=n_classes, classes=colour_classes)
        m["l0"] = float((acts != 0).float().sum(1).mean()) if model.cfg.mlp != "gelu" else float((acts > 0).float().sum(1).mean())
        per_layer[str(i)] = m
    if colour_classes is not None:
        keys.append("linear_probe_f1_colour")
    return {"layers": per_layer, **{key: float(np.mean([m[key] for m in per_layer.values()])) for key in keys}}


def sae_baseline(model, s: dict, sae_games, eval_games, workdir: Path, n_classes: int = 13) -> dict:
    """TopK SAE per layer on the GELU model's MLP hidden units, trained through featureforge."""
    import featureforge
    from featureforge_moex.board_probe import board_metrics, collect_at_dots
    from featureforge_moex.capture import capture
    from featureforge_moex.chess_lm import pad_games

    ids = pad_games(sae_games, model.cfg.context)
    per_layer = {}
    for i in range(model.cfg.n_layer):
        hook = f"blocks.{i}.mlp.hidden"
        rows = []
        for chunk in ids.split(64):
            acts = capture(model, chunk.clamp_min(0), hook)
            rows.append(acts[chunk >= 0])
        npy = workdir / f"sae_rows_layer{i}.npy"
        np.save(npy, torch.cat(rows).numpy())
        store = featureforge.cache("array", {"path": str(npy)}, store=str(workdir / f"sae_layer{i}.zarr"), progress=False, overwrite=True)
        [run] = featureforge.train("topk", {"d_dict": s["sae_width"], "k": s["sae_k"]}, store=store, out=workdir / f"sae_layer{i}",
                                   progress=False, overwrite=True, batch_size=s.get("sae_batch", 1024), epochs=s.get("sae_epochs", 1.0),
                                   warmup_steps=20, holdout_rows=0)
        sae = featureforge.load(run)
        acts, boards = collect_at_dots(model, eval_games, hook)
        with torch.no_grad():
            codes = sae.encode(acts)
        m = board_metrics(codes, boards, n_classes)
        m["l0"] = float((codes > 0).float().sum(1).mean())
        with torch.no_grad():
            x_hat = sae.decode(codes)
        m["fvu_at_dots"] = float(((acts - x_hat) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum())
        per_layer[str(i)] = m
        npy.unlink()
    return {"layers": per_layer, "width": s["sae_width"], "k": s["sae_k"],
            **{key: float(np.mean([m[key] for m in per_layer.values()])) for key in ("coverage", "reconstruction")}}


def main(argv=None) -> dict:
    from featureforge_moex import chess_games
    from featureforge_moex.chess_lm import pad_games

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (seconds)")
    p.add_argument("--ablations", action="store_true", help="also train router_only and relu_only (paper Table 5)")
    p.add_argument("--kinds", default=None, help="comma list of MLP kinds (default gelu,switch,moex; none for only --untrained)")
    p.add_argument("--untrained", action="store_true", help="also probe an untrained GELU model (chance level of the metrics)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (overrides the mode's)")
    p.add_argument("--workdir", default=None, help="models, stores and SAE runs (default: a temporary folder)")
    p.add_argument("--out", default=None, help="write the JSON here too (after every model)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = dict(QUICK if args.quick else FULL)
    if args.steps:
        s["steps"] = args.steps
    kinds = [k for k in args.kinds.split(",") if k and k != "none"] if args.kinds else ["gelu", "switch", "moex"]
    if args.ablations:
        kinds += ["router_only", "relu_only"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="moex-chess-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log("games", s["train_games"], "+", s["val_games"], "+", s["eval_games"], "+", s["sae_games"])
    split = {name: games_for(name, s[f"{name}_games"], args.seed * 10 + offset, s["context"], workdir)
             for offset, name in enumerate(("train", "val", "eval", "sae"))}
    tensors = {"train": pad_games(split["train"], s["context"]), "val": pad_games(split["val"], s["context"])}
    result: dict = {"benchmark": "moex_chess", "quick": args.quick, "settings": s, "workdir": str(workdir),
                    "torch_threads": torch.get_num_threads(), "paper_table1": PAPER_TABLE1, "models": {}}

    def flush() -> None:
        result["seconds"] = round(time.perf_counter() - t0, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    gelu_model = None
    for kind in kinds:
        model, train = train_or_load(kind, s, tensors, workdir, args.seed)
        log(kind, "val loss", round(train["val_loss"], 4), "probing")
        result["models"][kind] = {"val_loss": train["val_loss"], "train": train, **probe_layers(model, split["eval"])}
        log(kind, "coverage", round(result["models"][kind]["coverage"], 3), "reconstruction", round(result["models"][kind]["reconstruction"], 3))
        flush()
        if kind == "gelu":
            gelu_model = model
    if args.untrained:
        from featureforge_moex import chess_lm

        torch.manual_seed(args.seed)
        untrained = chess_lm.ChessLM(chess_lm.LMConfig(mlp="gelu", n_layer=s["n_layer"], d_model=s["d_model"], n_head=s["n_head"], context=s["context"]))
        from featureforge_moex.chess_lm import validation_loss

        result["models"]["untrained_gelu"] = {"val_loss": validation_loss(untrained, tensors["val"]), **probe_layers(untrained, split["eval"])}
        flush()
    if gelu_model is not None:
        log("sae baseline")
        result["models"]["sae_topk_on_gelu"] = sae_baseline(gelu_model, s, split["sae"], split["eval"], workdir)
        flush()
    result["table"] = {k: {"val_loss": v.get("val_loss"), "coverage": round(v["coverage"], 3), "reconstruction": round(v["reconstruction"], 3),
                           "linear_probe_f1_residual": round(v["linear_probe_f1_residual"], 3) if "linear_probe_f1_residual" in v else None,
                           "paper": PAPER_TABLE1.get(k)} for k, v in result["models"].items()}
    flush()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
