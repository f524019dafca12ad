"""MoE-X chess benchmark: GELU vs Switch MoE vs MoE-X character models on generated games.

Yang et al. 2025 (arXiv 2503.07639) Table 1 trains GPT-2-style models on chess PGN text and scores
each model's MLP hidden units with Karvonen et al.'s board-state metrics (coverage,
reconstruction); a TopK SAE on the GELU model's MLP is the post-hoc baseline. This script does the
same at a scale that fits a 2-core CPU: games from ``featureforge_testbeds.chess_games``, models from
``chess_lm`` at equal active MLP parameters, metrics from ``board_probe`` on every layer's
``blocks.i.mlp.hidden``, the SAE trained through featureforge (cache -> train topk -> load).

Prints one JSON object and writes it (with the run's provenance) to ``--out`` after every model, so a cut-off run still leaves
its finished models' numbers. Models are saved under ``--workdir/models/KIND`` (safetensors +
JSON, loadable by the ``chess-lm`` activation source) and reused when their config matches.

    python benchmarks/moex_chess.py                  # full run (about an hour on 2 busy cores)
    python benchmarks/moex_chess.py --ablations      # also router_only and relu_only
    python benchmarks/moex_chess.py --quick          # seconds: the test's smoke run
    python benchmarks/moex_chess.py --preset paper -o device=cuda --untrained --upcycle   # the paper's scale (GPU)
    python benchmarks/moex_chess.py --preset paper --dry-run --kinds moex                 # CPU: the preset builds and trains
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

import provenance

PAPER_TABLE1 = {"gelu": {"coverage": 0.356, "reconstruction": 0.608},
                "sae_topk_on_gelu": None,
                "switch": {"coverage": 0.424, "reconstruction": 0.734},
                "moex": {"coverage": 0.428, "reconstruction": 0.840}}

FULL = dict(n_layer=3, d_model=96, n_head=4, context=256, steps=600, batch_size=16, train_games=6000,
            val_games=200, eval_games=400, sae_games=300, sae_width=1536, sae_k=32)
# The paper trains on Karvonen's chess setup (lichess games as PGN characters, arXiv 2403.15498): his
# published model is 8 layers, d_model 512, 8 heads, context 1023 characters, batch 100 games, 600k
# iterations. Those numbers are taken from Karvonen's recipe, which Yang et al. state they follow;
# they were not checked against the MoE-X paper's own text here. Data: generated games (no lichess
# download), ``train_games`` of them, repeated as needed.
PAPER = dict(n_layer=8, d_model=512, n_head=8, context=1024, steps=600_000, batch_size=100, train_games=200_000,
             val_games=1000, eval_games=2000, sae_games=1000, sae_width=16384, sae_k=64, lr=3e-4)
# --dry-run: the preset's depth, width and experts at a 128-character context, two steps on a handful
# of games, no SAE (a CPU check that the preset builds, trains, saves and probes).
DRY_RUN = dict(context=128, steps=2, batch_size=1, train_games=4, val_games=2, eval_games=3, sae_games=0)
QUICK = dict(n_layer=2, d_model=32, n_head=2, context=128, steps=8, batch_size=8, train_games=48,
             val_games=8, eval_games=24, sae_games=16, sae_width=256, sae_k=8)


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def games_for(name: str, n: int, seed: int, context: int, workdir: Path) -> list:
    """Generated games, cached in the workdir (generation takes minutes on a busy machine)."""
    from featureforge_testbeds import chess_games

    if n == 0:
        return []
    path = workdir / f"games_{name}_{n}_{seed}_{context}.npz"
    if path.exists():
        return chess_games.load_games(path)
    games = chess_games.make_games(n, seed=seed, max_chars=context)
    chess_games.save_games(games, path)
    return games


def parse_options(pairs: list[str]) -> dict:
    """``-o device=cuda -o bf16=true``: where to train and whether to autocast to bf16."""
    opts = {"device": "cpu", "bf16": None}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in opts:
            raise SystemExit(f"moex_chess: option {pair!r} is not known; use -o device=cpu|cuda[:N] and -o bf16=true|false")
        opts[key] = value if key == "device" else value.lower() in ("1", "true", "yes")
    device = torch.device(opts["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("moex_chess: -o device=cuda but torch sees no CUDA device; run on a GPU machine or use -o device=cpu")
    if opts["bf16"] is None:  # default: bf16 autocast wherever the GPU supports it
        opts["bf16"] = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return {"device": device, "bf16": bool(opts["bf16"])}


def train_or_load(kind: str, s: dict, games: dict, workdir: Path, seed: int, opts: dict | None = None,
                  init=None) -> tuple[object, dict]:
    """Train ``kind`` (or reuse the saved model with the same settings); ``init`` gives a starting model (upcycling)."""
    from featureforge_testbeds import chess_lm

    opts = opts or {"device": torch.device("cpu"), "bf16": False}
    cfg = chess_lm.LMConfig(mlp=kind.replace("_upcycled", ""), n_layer=s["n_layer"], d_model=s["d_model"], n_head=s["n_head"], context=s["context"])
    folder = workdir / "models" / kind
    meta_path = folder / "train.json"
    want = {"config": dataclasses.asdict(cfg), "steps": s["steps"], "batch_size": s["batch_size"], "train_games": s["train_games"], "seed": seed}
    if meta_path.exists() and json.loads(meta_path.read_text()).get("want") == want:
        log(kind, "reusing", folder)
        return chess_lm.load_lm(folder).to(opts["device"]), json.loads(meta_path.read_text())["result"]
    torch.manual_seed(seed)
    model = (init() if init is not None else chess_lm.ChessLM(cfg)).to(opts["device"])
    result = chess_lm.train_lm(model, games["train"], games["val"], steps=s["steps"], batch_size=s["batch_size"], seed=seed,
                               lr=s.get("lr", 3e-3), bf16=opts["bf16"], log=lambda step, ce: log(kind, "step", step, "ce", round(ce, 4)))
    out = dataclasses.asdict(result) | {"params": sum(p.numel() for p in model.parameters()), "active_mlp_params": model.active_mlp_params()}
    chess_lm.save_lm(model, folder)
    meta_path.write_text(json.dumps({"want": want, "result": out}, indent=2))
    return model, out


def probe_layers(model, eval_games, n_classes: int = 13, colour_classes: tuple[int, ...] | None = None) -> dict:
    """Karvonen's unit metrics of every layer's ``mlp.hidden`` and a ridge probe of its residual stream.

    ``colour_classes`` adds ``linear_probe_f1_colour``: the probe scored on those classes only.
    """
    from featureforge_testbeds.board_probe import board_metrics, collect_at_dots, linear_probe_f1

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
    from featureforge_testbeds.board_probe import board_metrics, collect_at_dots
    from featureforge_testbeds.capture import capture
    from featureforge_testbeds.chess_lm import pad_games

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
    from featureforge_testbeds import chess_games
    from featureforge_testbeds.chess_lm import pad_games

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (seconds)")
    p.add_argument("--ablations", action="store_true", help="also train router_only and relu_only (paper Table 5)")
    p.add_argument("--kinds", default=None, help="comma list of MLP kinds (default gelu,switch,moex; none for only --untrained)")
    p.add_argument("--untrained", action="store_true", help="also probe an untrained GELU model (chance level of the metrics)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (overrides the mode's)")
    p.add_argument("--workdir", default=None, help="models, stores and SAE runs (default: a temporary folder)")
    provenance.add_out_argument(p, "moex_chess", help="rewritten after every model")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                   help="cpu: 3 layers, d 96, 600 steps (default); paper: Karvonen's 8 layers, d 512, 600k steps (a GPU job)")
    p.add_argument("--dry-run", action="store_true", help="the preset's models, a couple of steps on a few games, no SAE: proves the preset builds and trains")
    p.add_argument("--upcycle", action="store_true", help="also fine-tune MoE-X upcycled from the GELU model for --steps/2 (paper Table 4)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="device=cpu|cuda, bf16=true|false (default: true on a bf16 GPU)")
    args = p.parse_args(argv)
    out = provenance.out_path(args.out, "moex_chess")
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = parse_options(args.option)
    s = dict(QUICK if args.quick else PAPER if args.preset == "paper" else FULL)
    if args.dry_run:
        s.update(DRY_RUN)
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
    result: dict = {"benchmark": "moex_chess", "quick": args.quick, "preset": args.preset, "dry_run": args.dry_run, "settings": s,
                    "device": str(opts["device"]), "bf16": opts["bf16"], "workdir": str(workdir),
                    "torch_threads": torch.get_num_threads(), "paper_table1": PAPER_TABLE1, "models": {}}

    def flush() -> None:
        result["seconds"] = round(time.perf_counter() - t0, 1)
        provenance.save(result, out)

    gelu_model = None
    for kind in kinds:
        model, train = train_or_load(kind, s, tensors, workdir, args.seed, opts)
        log(kind, "val loss", round(train["val_loss"], 4), "probing")
        result["models"][kind] = {"val_loss": train["val_loss"], "train": train, **probe_layers(model, split["eval"])}
        log(kind, "coverage", round(result["models"][kind]["coverage"], 3), "reconstruction", round(result["models"][kind]["reconstruction"], 3))
        flush()
        if kind == "gelu":
            gelu_model = model
    if args.upcycle and gelu_model is not None:
        from featureforge_testbeds.chess_lm import upcycle_lm

        up = dict(s, steps=max(1, s["steps"] // 2))
        model, train = train_or_load("moex_upcycled", up, tensors, workdir, args.seed, opts, init=lambda: upcycle_lm(gelu_model.cpu(), "moex", noise=0.01, seed=args.seed))
        gelu_model.to(opts["device"])
        result["models"]["moex_upcycled"] = {"val_loss": train["val_loss"], "train": train, **probe_layers(model, split["eval"])}
        flush()
    if args.untrained:
        from featureforge_testbeds import chess_lm

        torch.manual_seed(args.seed)
        untrained = chess_lm.ChessLM(chess_lm.LMConfig(mlp="gelu", n_layer=s["n_layer"], d_model=s["d_model"], n_head=s["n_head"], context=s["context"])).to(opts["device"])
        from featureforge_testbeds.chess_lm import validation_loss

        result["models"]["untrained_gelu"] = {"val_loss": validation_loss(untrained, tensors["val"]), **probe_layers(untrained, split["eval"])}
        flush()
    if gelu_model is not None and s["sae_games"] > 0:
        log("sae baseline")
        result["models"]["sae_topk_on_gelu"] = sae_baseline(gelu_model, s, split["sae"], split["eval"], workdir)
        flush()
    result["table"] = {k: {"val_loss": v.get("val_loss"), "coverage": round(v["coverage"], 3), "reconstruction": round(v["reconstruction"], 3),
                           "linear_probe_f1_residual": round(v["linear_probe_f1_residual"], 3) if "linear_probe_f1_residual" in v else None,
                           "paper": PAPER_TABLE1.get(k)} for k, v in result["models"].items()}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    provenance.emit(result, out)
    return result


if __name__ == "__main__":
    main()
