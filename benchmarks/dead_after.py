"""AuxK on a CPU-sized run: dead latents with the fixed 10M-row horizon against horizons scaled to the run.

Gao et al. (2024) and sparsify count a latent dead after 10M tokens without firing; a run of a few
hundred thousand rows never reaches that, so AuxK never acts. This trains the same TopK dictionary
with 10M and with a twentieth, an eighth and a quarter of the run's rows (``-t dead_after=N``
reaches AuxK) on one synthetic store and prints JSON: latents silent for a twentieth of the run at
the end, dead latents on held-out rows (never active), FVU and the ground-truth MMCS.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dead_after.py --d-dict 4096 --k 4 --n-features 512

Since 2026-12-03 the topk default horizon is 1,000 mean firing intervals (1000 * d_dict / k rows,
1.02M here, longer than the run); these horizons of 12-60 intervals are why it is not shorter
(docs/benchmarks.md, "AuxK horizon"). fixed_10M sets the old default explicitly.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import featureforge as ff
from safetensors.torch import load_file

import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--d-dict", type=int, default=2048)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--n-features", type=int, default=1024)
    parser.add_argument("--fractions", type=float, nargs="*", default=[1 / 20, 1 / 8, 1 / 4], help="Horizons as fractions of the run's rows.")
    parser.add_argument("--workdir", default="stores/bench-dead-after", help="the store and the runs")
    provenance.add_out_argument(parser, "dead_after")
    args = parser.parse_args()
    out = Path(args.workdir)
    store = ff.cache("synthetic", {"d_in": 64, "n_features": args.n_features, "mean_active": 5, "seed": 3}, store=str(out / f"store-{args.n_features}.zarr"),
                     rows=args.rows, rows_per_chunk=8192, progress=False)


    results = {"rows": args.rows, "d_dict": args.d_dict, "k": args.k, "n_features": args.n_features, "runs": {}}
    horizon = None
    variants: list[tuple[str, dict]] = [("fixed_10M", {"dead_after": 10_000_000})]
    while variants:
        label, options = variants.pop(0)
        run_dir = out / label
        shutil.rmtree(run_dir, ignore_errors=True)
        [run] = ff.train("topk", {"d_dict": args.d_dict, "k": args.k, **options}, store=store, out=str(run_dir), batch_size=1024,
                         epochs=1, log_every=20, warmup_steps=20, progress=False, threads=1)
        config = json.loads((run / "config.json").read_text())
        from featureforge.run import read_metrics
        lines = read_metrics(run)
        report = ff.evaluate(run, store, ["reconstruction", "ground-truth"])
        # One yardstick for every run: latents silent for a twentieth of the run at its end (from the checkpoint).
        if horizon is None:  # the first run tells the run's length; the scaled horizons follow from it
            run_rows = config["training_result"]["rows"]
            horizon = run_rows // 20
            variants += [(f"run_over_{round(1 / f)}", {"dead_after": int(run_rows * f)}) for f in args.fractions]
        silent = load_file(str(run / "checkpoint" / "tensors.safetensors"))["m0.rows_since_fired"]
        rec = report["evaluators"]["reconstruction"]["metrics"]
        gt = report["evaluators"]["ground-truth"]["metrics"]
        results["runs"][label] = {
            "dead_after_rows": config.get("dead_after_rows") or config["options"].get("dead_after") or config["training"]["dead_after"],
            "training_rows": config["training_result"]["rows"],
            "log_lines_with_auxk": sum(1 for x in lines if (x.get("auxk_loss") or 0) > 0),
            "logged_dead_fraction_last": lines[-1]["dead_fraction"],
            "silent_for_scaled_horizon_at_end": float((silent >= horizon).float().mean()),
            "silent_horizon_rows": horizon,
            "eval_dead": rec.get("dead"), "eval_dead_fraction": rec.get("dead_fraction"),
            "eval_fvu": rec["fvu"],
            "mmcs": gt.get("mmcs"),
        }
    provenance.emit(results, provenance.out_path(args.out, "dead_after"))


if __name__ == "__main__":
    main()
