"""TopK quality against the learning rate and schedule on synthetic stores: the evidence for the default rate.

    .venv/bin/python benchmarks/lr_grid.py SHAPE ROWS LRS SCHEDULES [--out results.jsonl]
    .venv/bin/python benchmarks/lr_grid.py s128 300000 default,1e-3,3e-3,1e-2,3e-2 default,const

SHAPE is s64 (d 64, 512 latents, k 8), s128 (d 128, 1024, k 16) or s384 (d 384, 4096, k 32); LRS
are numbers or `default` (no --lr: the trainer's rate for the run); SCHEDULES are `default`
(warm-up + 20% decay) or `const`. One JSON line per run on stdout (held-out FVU, L0, dead
fraction, MMCS, MCC, recovered@0.9), also appended to ``--out`` with the run's provenance; stores
and runs go under $LR_GRID_DIR (default /tmp/featureforge-lr-grid). One torch thread. Results of
the 2026-12-03 session: benchmarks/results/lr_grid/lr_grid.jsonl.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import featureforge as ff
from featureforge.evaluation import evaluate

import provenance

SHAPES = {
    "s64": dict(src=dict(d_in=64, n_features=512, mean_active=4.0, seed=0), d_dict=512, k=8),
    "s128": dict(src=dict(d_in=128, n_features=1024, mean_active=8.0, seed=0), d_dict=1024, k=16),
    "s384": dict(src=dict(d_in=384, n_features=2048, mean_active=20.0, seed=0), d_dict=4096, k=32),
}
METRICS = ("fvu", "mmcs", "dead_fraction", "recovered", "recovered_fraction", "l0", "mcc")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("rows", type=int)
    p.add_argument("lrs", help="comma list of rates or `default`")
    p.add_argument("schedules", help="comma list of `default` and `const`")
    provenance.add_out_argument(p, "lr_grid", ".jsonl")
    args = p.parse_args()
    out_file = provenance.out_path(args.out, "lr_grid", ".jsonl")
    torch.set_num_threads(1)
    cfg = SHAPES[args.shape]
    root = os.path.join(os.environ.get("LR_GRID_DIR", "/tmp/featureforge-lr-grid"), args.shape)
    store_path = f"{root}/store.zarr"
    if not os.path.exists(store_path + "/zarr.json"):
        ff.cache("synthetic", cfg["src"], store=store_path, rows=max(args.rows, 300_000) + 70_000, progress=False)
    for sched in args.schedules.split(","):
        for lr in args.lrs.split(","):
            extra = {} if sched == "default" else {"warmup_steps": 0, "decay_fraction": 0.0} if sched == "const" else {"decay_fraction": 0.0}
            out = f"{root}/r{args.rows}_{sched}_lr{lr}"
            t = time.time()
            kw = {} if lr == "default" else {"lr": float(lr)}
            ff.train("topk", {"d_dict": cfg["d_dict"], "k": cfg["k"]}, store=store_path, out=out, rows=args.rows, progress=False,
                     overwrite=True, **kw, **extra)
            rep = evaluate(out, store_path)
            flat = {k: round(v, 4) for block in rep["evaluators"].values() for k, v in block["metrics"].items()
                    if isinstance(v, (int, float)) and k in METRICS}
            row = {"shape": args.shape, "rows": args.rows, "sched": sched, "lr": lr, **flat, "s": round(time.time() - t)}
            print(provenance.append_line(row, out_file), flush=True)


if __name__ == "__main__":
    main()
