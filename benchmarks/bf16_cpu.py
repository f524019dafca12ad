"""bf16 against fp32 for featureforge TopK on this CPU: speed and held-out FVU / MMCS (issue #22).

Three modes per shape, on one synthetic store each, same seed and rows:

- ``float32``: the loop's default;
- ``bfloat16``: the loop's ``dtype=bfloat16`` (autocast, fp32 master weights). On CPUs without
  bf16 units (no AVX512-BF16 / AMX) the topk kernel keeps its encoder matmul in fp32
  (``featureforge_sae._kernels.compute_dtype``), so this is what a user gets there;
- ``bfloat16_forced``: the same with that check forced to "fast bf16" (a private switch, for this
  measurement only): what bf16 arithmetic itself costs and changes on this CPU.

Speed is the loop's steady state (median ``rows_per_s`` of the metrics.jsonl windows after the
first two); FVU, MMCS and dead fraction come from ``featureforge.evaluate`` (reconstruction and
ground-truth evaluators, fp32) on the store's held-out rows. ``matmul`` times the encoder matmul
alone in fp32 and bf16. Figures from a shared machine: the load average is recorded around each run.

    .venv/bin/python benchmarks/bf16_cpu.py [--rows 262144] [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
import timing  # noqa: E402
from gpu_suite import ROOT, loop_cell, synthetic_store  # noqa: E402

SHAPES = {  # (d_in, d_dict, k) and the synthetic features, as benchmarks/train_vs_peers.py sizes them
    "d128_1024_k16": ((128, 1024, 16), {"d_in": 128, "n_features": 512, "mean_active": 10.0, "seed": 0}),
    "d384_4096_k32": ((384, 4096, 32), {"d_in": 384, "n_features": 2048, "mean_active": 20.0, "seed": 0}),
}
MODES = ("float32", "bfloat16", "bfloat16_forced")


@contextlib.contextmanager
def forced_bf16(on: bool) -> Iterator[None]:
    """Make the topk kernels treat this CPU as one with fast bf16 (measurement only)."""
    from featureforge_sae import _kernels

    saved = _kernels._cpu_has_fast_bf16
    if on:
        _kernels._cpu_has_fast_bf16 = lambda: True
    try:
        yield
    finally:
        _kernels._cpu_has_fast_bf16 = saved


def matmul(batch: int, d_in: int, d_dict: int, repeats: int = 7) -> dict[str, Any]:
    """Best and median seconds of the encoder matmul [batch, d_in] @ [d_in, d_dict] per dtype."""
    import torch

    out = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        times = timing.matmul_seconds(batch, d_in, d_dict, dt, repeats)
        out[name] = {"best_ms": round(1000 * min(times), 2), "median_ms": round(1000 * statistics.median(times), 2),
                     "gflops_best": round(2 * batch * d_in * d_dict / min(times) / 1e9, 1)}
    out["bf16_over_fp32_time"] = round(out["bfloat16"]["best_ms"] / out["float32"]["best_ms"], 2)
    return out


def run_mode(store: Any, shape: tuple[int, int, int], mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One training run and its held-out evaluation."""
    import featureforge

    d_in, d_dict, k = shape
    out = work / f"run-{d_in}-{mode}"
    load_before = os.getloadavg()
    with forced_bf16(mode == "bfloat16_forced"):
        cell = loop_cell(store, d_dict, k, "float32" if mode == "float32" else "bfloat16", "cpu", args.train_rows,
                         args.batch_size, out, seed=args.seed)
    report = featureforge.evaluate(str(out), store=store, device="cpu", progress=False)["evaluators"]
    shutil.rmtree(out, ignore_errors=True)
    rec, gt = report["reconstruction"]["metrics"], report.get("ground-truth", {}).get("metrics", {})
    cell.pop("run")
    cell.update(heldout_fvu=round(rec["fvu"], 4), heldout_l0=round(rec["l0"], 2), heldout_dead=rec["dead"],
                mmcs=round(gt["mmcs"], 4) if "mmcs" in gt else None, loadavg_before=list(load_before),
                loadavg_after=list(os.getloadavg()))
    return cell


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median speed per mode and each bf16 mode's speed ratio and FVU / MMCS change against fp32."""
    med = {m: {key: statistics.median(r[key] for r in rs) for key in ("rows_per_s", "heldout_fvu")} |
           {"mmcs": statistics.median(r["mmcs"] for r in rs) if all(r["mmcs"] is not None for r in rs) else None}
           for m, rs in runs.items()}
    base = med["float32"]
    out: dict[str, Any] = {"median": med}
    for m in MODES[1:]:
        if m in med:
            out[f"{m}_vs_float32"] = {
                "speed_ratio": round(med[m]["rows_per_s"] / base["rows_per_s"], 3),
                "fvu_change": round(med[m]["heldout_fvu"] - base["heldout_fvu"], 4),
                "mmcs_change": round(med[m]["mmcs"] - base["mmcs"], 4) if med[m]["mmcs"] is not None and base["mmcs"] is not None else None,
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=262144, help="rows of each synthetic store (5%% of them held out)")
    p.add_argument("--train-rows", type=int, default=229376, help="training rows per run (56 steps of 4096: within the training chunks of both stores)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats of the three modes")
    p.add_argument("--only", default="", help="comma list of shapes (default both)")
    p.add_argument("--stores", type=Path, default=ROOT / "stores", help="where the synthetic stores are kept (reused)")
    provenance.add_out_argument(p, "bf16_cpu")
    args = p.parse_args()
    os.environ.setdefault("FEATUREFORGE_PROGRESS", "0")
    import torch

    from featureforge_sae import _kernels

    result: dict[str, Any] = {
        "benchmark": "bf16_cpu", "featureforge_sae_sees_fast_bf16": _kernels._cpu_has_fast_bf16(),
        "note": "shared machine (other workers' jobs ran alongside): the load averages are recorded; speed ratios within one "
                "shape are interleaved runs, absolute rows/s are not a quiet machine's",
        "settings": {"store_rows": args.rows, "train_rows": args.train_rows, "batch_size": args.batch_size, "seed": args.seed,
                     "repeats": args.repeats, "threads": torch.get_num_threads()},
        "shapes": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bf16_cpu-") as tmp:
        for name, (shape, options) in SHAPES.items():
            if args.only and name not in args.only.split(","):
                continue
            store, seconds = synthetic_store(args.stores / f"bf16_cpu_{name}.zarr", options, args.rows)
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            for _ in range(args.repeats):
                for mode in MODES:
                    print(f"[bf16_cpu] {name} {mode}", file=sys.stderr, flush=True)
                    runs[mode].append(run_mode(store, shape, mode, args, Path(tmp)))
            result["shapes"][name] = {"shape": dict(zip(("d_in", "d_dict", "k"), shape)), "store": {"url": store.url, "rows": store.rows,
                                      "options": options, "made_in_s": round(seconds, 1)},
                                      "matmul": matmul(args.batch_size, shape[0], shape[1]), "runs": runs, **summary(runs)}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    provenance.emit(result, provenance.out_path(args.out, "bf16_cpu"))


if __name__ == "__main__":
    main()
