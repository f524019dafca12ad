"""Where a TopK training step's time goes in the real loop (featureforge.train on a synthetic store).

Runs ``featureforge.train("topk", ...)`` under cProfile at a shape and thread count and prints one
JSON object: rows/s of the whole call, and the share of the time spent in each part of the loop
(the trainer's loss, backward, Adam, the loop's metric bookkeeping, the reader, ...), from the
profile's cumulative times (also written to ``--out``, with the run's provenance). A second, unprofiled run gives the rows/s without profiler overhead.

    python benchmarks/step_profile.py --d-in 128 --d-dict 1024 --k 16 --threads 1
    python benchmarks/step_profile.py --d-in 384 --d-dict 4096 --k 32 --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import torch

import featureforge

import provenance

# (label, file suffix, function name) of the loop's parts; cumulative time of each.
PARTS = [
    ("loss", "trainers.py", "loss"),
    ("backward", "_tensor.py", "backward"),
    ("adam", "adam.py", "step"),
    ("before_step", "trainers.py", "before_step"),
    ("after_step", "trainers.py", "after_step"),
    ("zero_grad", "optimizer.py", "zero_grad"),
    ("step_total", "_loop.py", "_step"),
    ("to_device", "_loop.py", "_to_device"),
    ("reader_next", "_loop.py", "_shard_batches"),
    ("log", "_loop.py", "_log"),
    ("checkpoint", "_loop.py", "_checkpoint"),
    ("init_sample", "_loop.py", "_init_sample"),
    ("build", "_loop.py", "_build_members"),
    ("finish", "_loop.py", "_finish"),
]


def _store(root: Path, d_in: int, rows: int) -> str:
    path = root / f"syn_d{d_in}_{rows}"
    if not (path / "zarr.json").exists():
        featureforge.cache("synthetic", {"d_in": d_in, "n_features": 4 * d_in, "mean_active": 20.0, "seed": 0},
                           store=str(path), rows=rows, progress=False, overwrite=True)
    return str(path)


def _train(store: str, out: Path, args) -> float:
    t0 = time.perf_counter()
    featureforge.train("topk", {"d_dict": args.d_dict, "k": args.k}, store=store, out=out, overwrite=True, progress=False,
                       rows=args.rows, batch_size=args.batch, threads=args.threads, lr=1e-3, log_every=args.log_every)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-in", type=int, default=128)
    p.add_argument("--d-dict", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rows", type=int, default=4096 * 60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--dir", default=os.environ.get("STEP_PROFILE_DIR", "stores/step_profile"))
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--torch-ops", action="store_true",
                   help="also run under torch.profiler and report the aten ops' self CPU time (what the CPU's kernels spend the step on)")
    provenance.add_out_argument(p, "step_profile")
    args = p.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    store = _store(root, args.d_in, args.rows + 65536)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        _train(store, Path(tmp) / "warm", argparse.Namespace(**{**vars(args), "rows": args.batch * 4}))
        plain = _train(store, Path(tmp) / "plain", args)
        report = {"shape": {"d_in": args.d_in, "d_dict": args.d_dict, "k": args.k, "batch": args.batch}, "threads": args.threads,
                  "rows": args.rows, "rows_per_s": args.rows / plain, "load": os.getloadavg()[0]}
        if not args.no_profile:
            prof = cProfile.Profile()
            prof.enable()
            total = _train(store, Path(tmp) / "prof", args)
            prof.disable()
            stats = pstats.Stats(prof).stats
            parts = {}
            for label, suffix, fn in PARTS:
                cum = sum(v[3] for (file, _, name), v in stats.items() if name == fn and file.endswith(suffix))
                parts[label] = round(cum / total, 4)
            report["profiled_s"] = total
            report["share_of_train_call"] = parts
            top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
            report["top_self_time"] = [{"fn": f"{Path(f).name}:{line}:{name}", "tottime_share": round(v[2] / total, 4), "calls": v[1]}
                                       for (f, line, name), v in top]
        if args.torch_ops:
            report["torch_ops"] = _torch_ops(store, Path(tmp) / "ops", args)
    provenance.emit(report, provenance.out_path(args.out, "step_profile"))


def _torch_ops(store: str, out: Path, args) -> dict:
    """Self CPU time per aten op over a whole train call, as shares of the ops' total (all threads)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = _train(store, out, args)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or e.key.startswith("Optimizer")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]
    return {"wall_s": wall, "ops_self_cpu_s": total / 1e6,
            "top": [{"op": e.key, "self_share": round(e.self_cpu_time_total / total, 4), "calls": e.count} for e in top]}


if __name__ == "__main__":
    main()
