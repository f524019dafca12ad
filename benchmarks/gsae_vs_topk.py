"""g-SAE vs TopK at equal k on the synthetic source with a downstream loss (quiet-but-important features).

Caches ``synthetic -o downstream=true`` (important features are quiet: coefficients x quiet_scale,
but weigh important_weight in the readout loss), trains ``topk`` and ``gsae`` (one or more betas /
gradient normalisations) with the same seed, data and k, and prints one JSON object (also written
to ``--out``, with the run's provenance):

* mmcs_important / mmcs_other: mean over true features (that subset) of the best cosine with a decoder row,
* recovered_important / recovered_other: fraction of that subset with best cosine > 0.9,
* fvu: held-out FVU with plain TopK encoding (inference; no gradients),
* fvu_grad_select: held-out FVU when selecting with the held-out gradients (as in training),
* downstream_err: mean over held-out rows of 1/2 sum_i a_i (f_i . (x - x_hat))^2 (plain TopK encoding):
  the readout loss's sensitivity to the reconstruction error, relative to the same for x_hat = mean(x).

Defaults are the setting docs/methods/gsae.md reports: gated readout (``-s readout=gated``), important
features at half the loud ones' size (``-s quiet_scale=0.5``), k=8, 600k rows in batches of 256.

    python benchmarks/gsae_vs_topk.py [--rows 600000] [--k 8] [--betas 4,16] [-s readout=quadratic] [-s quiet_scale=0.25]

``--real`` runs the issue's real-model comparison instead: the tiny GPT-2 trained on standard-library
text (``benchmarks/train_tiny_lm.py``; trained first if ``--model`` is missing), its residual
stream after block ``--hook`` cached with ``grads=true``, ``topk`` and ``gsae`` trained at each of
``--ks`` (equal L0) and extra betas at ``--beta-k``, each evaluated by ``reconstruction`` (FVU,
dead latents; g-SAE also with gradient selection) and ``downstream`` (CE-loss score and KL on
held-out documents, g-SAE also spliced with live gradients). Prints JSON and draws the Pareto plot
to ``--plot``. Runs already complete in ``--workdir`` are reused, so an interrupted run resumes.

    python benchmarks/gsae_vs_topk.py --real --workdir /tmp/gsae_real [--ks 2,4,8,16,32] [--betas 1,16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featureforge as ff
from featureforge.builtin.synthetic import SyntheticSource


def measure(run: Path, store: Any, source: SyntheticSource, eval_rows: tuple[int, int]) -> dict[str, float]:
    from featureforge_sae._kernels import gsae_encode

    d = ff.load(run)
    truth = source.ground_truth()
    feats = torch.from_numpy(truth["features"]).double()
    imp = truth["important"]
    dec = d.decoder_directions.detach().double()
    cos = (feats / feats.norm(dim=1, keepdim=True)) @ (dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    best = cos.max(1).values.numpy()
    rows = source.rows(*eval_rows)
    x = torch.from_numpy(rows["acts"])
    g = torch.from_numpy(rows["grads"])
    with torch.no_grad():
        x_hat = d.decode(d.encode(x))
        var = (x - x.mean(0)).pow(2).sum()
        fvu = float((x - x_hat).pow(2).sum() / var)
        s = float(d.input_scale)
        cfg = json.loads((run / "config.json").read_text())
        o = cfg["options"]
        vals, idx, *_ = gsae_encode(d, x * s, g / s, d.k, float(o.get("beta", 4.0)), o.get("grad_norm", "row"), "z")
        xg = (torch.zeros(x.shape[0], d.d_dict).scatter_(1, idx, vals) @ d.W_dec + d.b_dec) / s
        fvu_g = float((x - xg).pow(2).sum() / var)
        a = torch.from_numpy(truth["importance"]).float()
        f = torch.from_numpy(truth["features"])

        def readout(e: torch.Tensor) -> float:
            return float((0.5 * ((e @ f.T) ** 2 * a).sum(1)).mean())

        ds = readout(x - x_hat) / readout(x - x.mean(0))
    return {
        "mmcs_important": float(best[imp].mean()),
        "mmcs_other": float(best[~imp].mean()),
        "recovered_important": float((best[imp] > 0.9).mean()),
        "recovered_other": float((best[~imp] > 0.9).mean()),
        "fvu": fvu,
        "fvu_grad_select": fvu_g,
        "downstream_err": ds,
    }


SYNTHETIC_DEFAULTS = {"readout": "gated", "quiet_scale": 0.5}


def run(rows: int = 600_000, k: int = 8, betas: tuple[float, ...] = (4.0, 16.0), norms: tuple[str, ...] = ("row",),
        d_in: int = 64, n_features: int = 256, d_dict: int = 512, mean_active: float = 6.0, seed: int = 0,
        batch_size: int = 256, threads: int = 1, workdir: str | None = None, source_options: dict | None = None) -> dict:
    src_opts = dict(d_in=d_in, n_features=n_features, mean_active=mean_active, downstream=True, seed=seed,
                    **{**SYNTHETIC_DEFAULTS, **(source_options or {})})
    tmp = Path(workdir or tempfile.mkdtemp(prefix="gsae_bench_"))
    store_path = tmp / "store"
    ff.cache("synthetic", src_opts, store=str(store_path), rows=rows, rows_per_chunk=8192, overwrite=True, progress=False)
    store = ff.open_store(str(store_path))
    source = SyntheticSource(**src_opts)
    eval_rows = (rows, rows + 16384)  # fresh rows past the cached ones: never trained on
    common = dict(store=str(store_path), batch_size=batch_size, seed=seed, threads=threads, progress=False,
                  overwrite=True, warmup_steps=50, dead_after=200_000)
    out: dict = {"setup": {**src_opts, "rows": rows, "k": k, "d_dict": d_dict, "batch_size": batch_size,
                           "eval_rows": list(eval_rows)}, "runs": {}}
    configs = [("topk", "topk", {})] + [(f"gsae beta={b} grad_norm={n}", "gsae", {"beta": b, "grad_norm": n})
                                        for n in norms for b in betas]
    for label, trainer, extra in configs:
        started = time.perf_counter()
        run_dir = tmp / label.replace(" ", "_").replace("=", "")
        ff.train(trainer, {"k": k, "d_dict": d_dict, "dead_after": 200_000, **extra}, out=str(run_dir),
                 **{kk: v for kk, v in common.items() if kk != "dead_after"})
        res = measure(run_dir, store, source, eval_rows)
        res["seconds"] = round(time.perf_counter() - started, 1)
        out["runs"][label] = res
    return out


GSAE_DEFAULT_BETA = 4.0
REAL_METRICS = {
    "reconstruction": ("l0", "fvu", "fvu_grads", "dead_fraction"),
    "downstream": ("ce_clean", "ce_zero", "ce_dictionary", "ce_dictionary_grads", "ce_loss_score", "ce_loss_score_grads",
                   "kl_dictionary", "kl_dictionary_grads", "tokens"),
}


def _complete(run_dir: Path) -> bool:
    cfg = run_dir / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("status") == "complete"


def run_real(workdir: str, model: str, hook: str, rows: int, ks: tuple[int, ...], betas: tuple[float, ...], beta_k: int,
             d_dict: int, epochs: float, batch_size: int, eval_sequences: int, threads: int, lm_minutes: float, seed: int = 0) -> dict:
    import subprocess
    import sys

    tmp = Path(workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model)
    if not (model_dir / "config.json").exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("train_tiny_lm.py")), "--minutes", str(lm_minutes),
                        "--name", model_dir.name, "--out-root", str(model_dir.parent)], check=True)
    store_path = tmp / "store.zarr"
    opts = {"model": str(model_dir.resolve()), "hook": hook, "grads": True, "batch_size": 32}
    try:
        store = ff.open_store(str(store_path))
        done = store.rows >= rows
    except Exception:
        done = False
    if not done:
        ff.cache("hf", opts, store=str(store_path), rows=rows, overwrite=True, progress=True)
    store = ff.open_store(str(store_path))
    common = dict(store=str(store_path), epochs=epochs, batch_size=batch_size, threads=threads, progress=True, seed=seed)
    plan = [("topk", {"k": k}) for k in ks] + [("gsae", {"k": k}) for k in ks]
    plan += [("gsae", {"k": beta_k, "beta": b}) for b in betas]
    results = []
    for trainer, extra in plan:
        label = f"{trainer} " + " ".join(f"{key}={v:g}" for key, v in extra.items()) + (f" seed={seed}" if seed else "")
        run_dir = tmp / "runs" / label.replace(" ", "_")
        started = time.perf_counter()
        if not _complete(run_dir):
            ff.train(trainer, {"d_dict": d_dict, **extra}, out=str(run_dir), overwrite=True, **common)
        trained = time.perf_counter() - started
        report = ff.evaluate(run_dir, store, {"reconstruction": {}, "downstream": {"max_sequences": eval_sequences}})
        row: dict[str, Any] = {"label": label, "trainer": trainer, **extra, "seed": seed, "train_seconds": round(trained, 1)}
        if trainer == "gsae":
            row.setdefault("beta", json.loads((run_dir / "config.json").read_text())["options"].get("beta"))
        for name, keys in REAL_METRICS.items():
            m = report["evaluators"][name]["metrics"]
            row.update({key: m[key] for key in keys if key in m})
        if trainer == "topk":  # control: the same topk weights, selecting with live gradients at inference only
            row.update({f"control_{key}": v for key, v in _gradient_selection_control(run_dir, store, eval_sequences).items()})
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"setup": {**opts, "rows": rows, "ks": list(ks), "d_dict": d_dict, "epochs": epochs, "train_batch_size": batch_size,
                      "eval_sequences": eval_sequences, "betas_at_k": {"k": beta_k, "betas": list(betas)},
                      "store_rows": store.rows}, "runs": results}


def _gradient_selection_control(run_dir: Path, store: Any, eval_sequences: int) -> dict[str, float]:
    """fvu_grads / CE / KL of a topk run whose latents are picked by g-SAE's rule (beta=GSAE_DEFAULT_BETA)
    at inference only: separates what training with gradients buys from what selecting with them does."""
    from featureforge import EvaluationContext
    from featureforge_sae._models import GradientTopKSAE

    d = GradientTopKSAE.from_topk(ff.load(run_dir), GSAE_DEFAULT_BETA)
    registry = ff.get_registry()
    ctx = EvaluationContext(store, run_dir / "control", run_dir=run_dir, progress=False,
                            run_config=json.loads((run_dir / "config.json").read_text()))
    (run_dir / "control").mkdir(exist_ok=True)
    rec = registry.get("evaluator", "reconstruction")({}).evaluate(d, ctx).metrics
    down = registry.get("evaluator", "downstream")({"max_sequences": eval_sequences}).evaluate(d, ctx).metrics
    return {"fvu_grads": rec["fvu_grads"], "ce_dictionary_grads": down["ce_dictionary_grads"],
            "ce_loss_score_grads": down["ce_loss_score_grads"], "kl_dictionary_grads": down["kl_dictionary_grads"]}


def plot_real(res: dict, path: Path) -> None:
    """Pareto panels: CE-loss score, KL, FVU and dead fraction vs L0 (topk vs gsae, both gsae modes)."""
    from featureforge.plots import new_figure, save_figure

    default_beta = GSAE_DEFAULT_BETA
    runs = [dict(r) for r in res["runs"]]
    for r in runs:  # scores saturate near 1: plot the gap on a log axis
        for mode in ("", "_grads"):
            if "ce_loss_score" + mode in r:
                r["ce_loss_gap" + mode] = 1.0 - r["ce_loss_score" + mode]
    lines = [("topk", [r for r in runs if r["trainer"] == "topk"], "", "#4c72b0", "o-"),
             (f"gsae beta={default_beta:g}, plain TopK at inference",
              [r for r in runs if r["trainer"] == "gsae" and r.get("beta") == default_beta], "", "#dd8452", "s-"),
             (f"gsae beta={default_beta:g}, selected with live gradients",
              [r for r in runs if r["trainer"] == "gsae" and r.get("beta") == default_beta], "_grads", "#c44e52", "^--"),
             (f"control: topk weights, selected with live gradients (beta={default_beta:g})",
              [{**r, **{k[len("control_"):]: v for k, v in r.items() if k.startswith("control_")}} for r in runs if r["trainer"] == "topk"],
              "_grads", "#55a868", "v:")]
    panels = [("ce_loss_gap", "1 − CE-loss score (lower is better)"), ("kl_dictionary", "KL(clean ‖ spliced), nats/token"),
              ("fvu", "FVU (held-out)"), ("dead_fraction", "dead latent fraction")]
    fig = new_figure(11, 7.5)
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        for label, rows, suffix, color, style in lines:
            rows = sorted(rows, key=lambda r: r["l0"])
            metric = key.replace("_dictionary", "_dictionary" + suffix) if key.startswith("kl") else key + suffix
            pts = [(r["l0"], r[metric]) for r in rows if metric in r]
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=label, markersize=4)
        for r in runs:
            if r["trainer"] == "gsae" and r.get("beta") != default_beta and key in r:
                ax.plot(r["l0"], r[key], "x", color="#8172b3")
                ax.annotate(f"β={r['beta']:g}", (r["l0"], r[key]), fontsize=7, color="#8172b3")
        ax.set_xscale("log", base=2)
        if key in ("ce_loss_gap", "kl_dictionary", "fvu"):
            ax.set_yscale("log")
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_title(title, fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    setup = res["setup"]
    fig.suptitle(f"topk vs gsae on {Path(setup['model']).name}, hook {setup['hook']}, d_dict={setup['d_dict']}", fontsize=10)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="cached rows (default 300k synthetic, 600k real)")
    p.add_argument("--k", type=int, default=8, help="synthetic: active latents per row")
    p.add_argument("--betas", default=None, help="synthetic: betas to train (default 1,4,16); real: extra betas at --beta-k (default 1,16)")
    p.add_argument("--norms", default="row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None)
    p.add_argument("--source-option", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="synthetic: extra synthetic-source option, e.g. -s quiet_scale=0.5 -s mean_active=4")
    p.add_argument("--real", action="store_true", help="the real-model comparison (tiny GPT-2 on stdlib text)")
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "stores" / "models" / "stdlib-gpt2"))
    p.add_argument("--hook", default="transformer.h.1", help="real: module whose output is cached (middle of the 4 blocks)")
    p.add_argument("--ks", default="2,4,8,16,32")
    p.add_argument("--beta-k", type=int, default=4)
    p.add_argument("--d-dict", type=int, default=1024)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=None, help="rows per step (default 256 synthetic, 1024 real)")
    p.add_argument("--eval-sequences", type=int, default=256)
    p.add_argument("--lm-minutes", type=float, default=5.0, help="real: training time of the tiny LM when it is missing")
    p.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "methods" / "gsae_real_pareto.png"))
    import provenance  # here, not at the top: tests load this file as a module from outside benchmarks/

    provenance.add_out_argument(p, "gsae_vs_topk")
    a = p.parse_args()
    if a.real:
        res = run_real(a.workdir or tempfile.mkdtemp(prefix="gsae_real_"), a.model, a.hook, a.rows or 600_000,
                       tuple(int(k) for k in a.ks.split(",")), tuple(float(b) for b in (a.betas if a.betas is not None else "1,16").split(",") if b),
                       a.beta_k, a.d_dict, a.epochs, a.batch_size or 1024, a.eval_sequences, a.threads, a.lm_minutes, a.seed)
        plot_real(res, Path(a.plot))
        res["plot"] = a.plot
    else:
        res = run(rows=a.rows or 600_000, k=a.k, betas=tuple(float(b) for b in (a.betas or "4,16").split(",")), batch_size=a.batch_size or 256,
                  norms=tuple(a.norms.split(",")), seed=a.seed, threads=a.threads, workdir=a.workdir,
                  source_options={kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in a.source_option})
    provenance.emit(res, provenance.out_path(a.out, "gsae_vs_topk"))


if __name__ == "__main__":
    main()
