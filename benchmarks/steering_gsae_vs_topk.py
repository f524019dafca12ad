"""Do g-SAE latents steer better than TopK latents? (the g-SAE paper's second claim, arXiv 2411.10397)

On the tiny GPT-2 trained on standard-library text (``benchmarks/train_tiny_lm.py``; trained first
if ``--model`` is missing), residual stream after ``--hook`` cached with ``grads=true``: ``topk`` and
``gsae`` (beta=4) trained at equal width (``--d-dict``) and L0 (``--k``) for each seed, then the
``steering`` evaluator (latents amplified where they are silent; random direction of equal norm as
the control) and ``reconstruction`` (L0, FVU); per run the medians over latents and the fraction of latents beating their own
control, then mean ± sd over seeds. Prints one JSON object (also written to ``--out``; the
reported run: ``benchmarks/results/steering_gsae_vs_topk/steering_gsae_vs_topk.json``); runs already complete in
``--workdir`` are reused, so an interrupted run resumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/steering_gsae_vs_topk.py --workdir /tmp/steer_bench [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import featureforge as ff

import provenance

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("output_score", "output_score_gain", "stability", "kl_rest", "ce_increase", "push_norm")


def _complete(run_dir: Path) -> bool:
    cfg = run_dir / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("status") == "complete"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", default=str(ROOT / "stores" / "models" / "stdlib-gpt2"))
    p.add_argument("--hook", default="transformer.h.1")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--d-dict", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--latents", type=int, default=32)
    p.add_argument("--contexts", type=int, default=32)
    p.add_argument("--alphas", default="2,4,8")
    p.add_argument("--threads", type=int, default=1)
    provenance.add_out_argument(p, "steering_gsae_vs_topk")
    a = p.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(a.model)
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_tiny_lm.py"), "--minutes", "12", "--threads", "1",
                        "--name", model.name, "--out-root", str(model.parent)], check=True)
    store_path = work / "store.zarr"
    try:
        store = ff.open_store(str(store_path))
        assert store.complete and store.rows >= a.rows
    except Exception:
        opts = {"model": str(model.resolve()), "hook": a.hook, "grads": True, "batch_size": 32}
        store = ff.cache("hf", opts, store=str(store_path), rows=a.rows, overwrite=True, progress=False)
    evaluators = {"reconstruction": {}, "steering": {"latents": a.latents, "contexts": a.contexts, "alphas": a.alphas}}
    runs: list[dict[str, Any]] = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for trainer in ("topk", "gsae"):
            run_dir = work / f"{trainer}_seed{seed}"
            done = run_dir / "steering_row.json"
            if done.exists():
                runs.append(json.loads(done.read_text()))
                continue
            started = time.perf_counter()
            if not _complete(run_dir):
                ff.train(trainer, {"d_dict": a.d_dict, "k": a.k}, store=str(store_path), out=str(run_dir), overwrite=True,
                         epochs=a.epochs, batch_size=1024, threads=a.threads, seed=seed, progress=False)
            report = ff.evaluate(run_dir, store, evaluators)
            rec = report["evaluators"]["reconstruction"]["metrics"]
            steer = report["evaluators"]["steering"]["metrics"]
            row = {"trainer": trainer, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
                   "l0": rec["l0"], "fvu": rec["fvu"], "dead_fraction": rec.get("dead_fraction"),
                   **{k: v for k, v in steer.items() if k.split("_a")[0].removeprefix("control_") in KEYS}}
            # Per latent: does the latent beat its own random direction of equal norm?
            from featureforge.run import plots_dir
            table = json.loads((plots_dir(run_dir) / "steering.json").read_text())["latents"]
            for alpha in a.alphas.split(","):
                tag = f"_a{float(alpha):g}"
                for name, key in (("beats_control", "output_score_gain"), ("stab_beats_control", "stability")):
                    row[name + tag] = sum(t[key + tag] > t["control_" + key + tag] for t in table) / len(table)
            runs.append(row)
            done.write_text(json.dumps(row))
            print(json.dumps(row), file=sys.stderr, flush=True)
    provenance.emit({"setup": {**vars(a), "store_rows": store.rows}, "summary": summarize(runs), "runs": runs},
                    provenance.out_path(a.out, "steering_gsae_vs_topk"))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each run-level median, per trainer (and its control)."""
    import statistics

    out: dict[str, Any] = {}
    for trainer in sorted({r["trainer"] for r in runs}):
        rows = [r for r in runs if r["trainer"] == trainer]
        keys = [k for k in rows[0] if k not in ("trainer", "seed", "seconds")]
        out[trainer] = {k: [round(statistics.mean(r[k] for r in rows), 5), round(statistics.pstdev(r[k] for r in rows), 5)]
                        for k in keys if all(isinstance(r.get(k), (int, float)) for r in rows)}
    return out


if __name__ == "__main__":
    main()
