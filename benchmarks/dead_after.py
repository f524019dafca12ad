"""AuxK on a CPU-sized run: dead latents with the fixed 10M-row horizon against the run-scaled default.

Gao et al. (2024) and sparsify count a latent dead after 10M tokens without firing; a run of a few
hundred thousand rows never reaches that, so AuxK never acts. The loop's default now scales the
horizon to the run (a twentieth of its rows, capped at 10M). This trains the same TopK dictionary
both ways on one synthetic store and prints JSON: dead latents on held-out rows (never active),
FVU and the ground-truth MMCS.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dead_after.py [--rows 262144] [--out stores/bench-dead-after]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import featureforge as ff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--d-dict", type=int, default=2048)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", default="stores/bench-dead-after")
    parser.add_argument("--save", default="benchmarks/results_dead_after.json")
    args = parser.parse_args()
    out = Path(args.out)
    store = ff.cache("synthetic", {"d_in": 64, "n_features": 1024, "mean_active": 5, "seed": 3}, store=str(out / "store.zarr"),
                     rows=args.rows, rows_per_chunk=8192, progress=False)
    results = {"rows": args.rows, "d_dict": args.d_dict, "k": args.k, "runs": {}}
    for label, options in (("fixed_10M", {"dead_after": 10_000_000}), ("run_scaled_default", {})):
        run_dir = out / label
        shutil.rmtree(run_dir, ignore_errors=True)
        [run] = ff.train("topk", {"d_dict": args.d_dict, "k": args.k, **options}, store=store, out=str(run_dir), batch_size=1024,
                         epochs=1, log_every=20, warmup_steps=20, progress=False, threads=1)
        config = json.loads((run / "config.json").read_text())
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        report = ff.evaluate(run, store, ["reconstruction", "ground-truth"])
        rec = report["evaluators"]["reconstruction"]["metrics"]
        gt = report["evaluators"]["ground-truth"]["metrics"]
        results["runs"][label] = {
            "dead_after_rows": config["options"].get("dead_after") or config["training"]["dead_after"],
            "auxk_active_steps": sum(1 for x in lines if (x.get("auxk_loss") or 0) > 0),
            "logged_dead_fraction_last": lines[-1]["dead_fraction"],
            "eval_dead": rec.get("dead"), "eval_dead_fraction": rec.get("dead_fraction"),
            "eval_fvu": rec["fvu"],
            "mmcs": gt.get("mmcs"),
        }
    text = json.dumps(results, indent=2)
    print(text)
    Path(args.save).write_text(text + "\n")


if __name__ == "__main__":
    main()
