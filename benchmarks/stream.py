"""Streamed training (issue 24): batch mixing of the streamed reader, streamed against
cache-then-train on MiniLM, and two torchrun processes against one. Prints one JSON object (also
written to ``--out``, with the run's provenance).

    python benchmarks/stream.py mixing                      # distinct sequences per batch by window size
    python benchmarks/stream.py minilm --rows 131072        # streamed vs cache-then-train, all-MiniLM-L6-v2
    python benchmarks/stream.py ddp --rows 65536            # torchrun 2 processes (gloo, CPU) vs 1 process

``minilm`` runs every step as its own ``featureforge`` process (a wrapper reports its peak RSS,
``RUSAGE_CHILDREN``); both runs train the same TopK dictionary with the same seed and rows drawn from
the source's first ``rows + holdout`` rows, and both are evaluated on one other store (the hf
source with ``-o seed=1``: another document order) with ``reconstruction`` and ``downstream``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import featureforge as ff
from featureforge.run import read_metrics
from featureforge.training._stream import StreamedReader, StreamPlan, default_stream_buffer_rows

import provenance

FF = [sys.executable, "-m", "featureforge.cli"]


# -- mixing -----------------------------------------------------------------------------------------
class Sequences(ff.ActivationSource):
    """A stream of ``seq_len``-row sequences in order (as a sequence model's source emits them)."""

    name = "bench-stream-sequences"

    def __init__(self, rows: int, seq_len: int):
        super().__init__()
        self.total, self.seq_len = rows, seq_len

    @property
    def d_in(self) -> int:
        return 1

    @property
    def n_rows(self) -> int:
        return self.total

    @property
    def columns(self) -> dict[str, str]:
        return {"seq_ids": "int64"}

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        mine = np.arange(rank, self.total, world_size)
        for start in range(skip_rows, len(mine), 65536):
            idx = mine[start : start + 65536]
            yield {"acts": idx[:, None].astype(np.float32), "seq_ids": idx // self.seq_len}


def mixing(args: argparse.Namespace) -> dict[str, Any]:
    src = Sequences(args.rows, args.seq_len)
    rng = np.random.default_rng(0)
    train = args.rows - args.seq_len
    uniform = float(np.mean([len(np.unique((rng.choice(train, args.batch_size, replace=False) + args.seq_len) // args.seq_len))
                             for _ in range(50)]))
    out: dict[str, Any] = {"rows": args.rows, "sequence_rows": args.seq_len, "batch_size": args.batch_size,
                           "uniform_sampling_distinct_sequences_per_batch": round(uniform, 1),
                           "unbounded_uniform_distinct_sequences_per_batch": args.batch_size, "target_ratio": 0.9,
                           "default_window_rows": {f"d{d}": default_stream_buffer_rows(d, args.batch_size) for d in (384, 768, 4096)},
                           "windows": []}
    for window in args.windows:
        plan = StreamPlan.make(src, 1, args.seq_len, window)  # one sequence held out
        reader = StreamedReader(plan, src, args.batch_size, columns=("acts", "seq_ids"), seed=0)
        distinct = float(np.mean([len(np.unique(b["seq_ids"].numpy())) for b in reader]))
        out["windows"].append({"window_rows": window, "distinct_sequences_per_batch": round(distinct, 1),
                               "ratio_vs_uniform_over_these_rows": round(distinct / uniform, 3),
                               "ratio_vs_unbounded_uniform": round(distinct / args.batch_size, 3),
                               "buffer_MiB_d384_fp32": round(2 * window * 384 * 4 / 2**20),
                               "buffer_MiB_d768_fp32": round(2 * window * 768 * 4 / 2**20)})
        print(f"[stream mixing] window {window}: {distinct:.1f}", file=sys.stderr, flush=True)
    return out


# -- MiniLM -----------------------------------------------------------------------------------------
def _timed(cmd: list[Any]) -> dict[str, Any]:
    """Run one command; its wall time, stdout and stderr."""
    start = time.perf_counter()
    env = {**os.environ, "FEATUREFORGE_PROGRESS": "0"}
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "stdout": stdout, "stderr": stderr}


def _run(cmd: list[Any]) -> dict[str, Any]:
    """``_timed`` with peak RSS: the command runs under a tiny wrapper that reports its child's maxrss."""
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'rc': r.returncode, 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)")
    out = _timed([sys.executable, "-c", wrapper, *cmd])
    last = json.loads(out["stderr"].strip().splitlines()[-1])
    out["peak_rss_MiB"] = round(last["maxrss_kib"] / 1024)
    return out


def _evaluate(run: Path, store: Path) -> dict[str, Any]:
    out = _timed([*FF, "evaluate", run, "--store", store, "--evaluator", "reconstruction", "--evaluator", "downstream", "--json"])
    report = json.loads(out["stdout"][out["stdout"].index("{"):])
    rec, down = report["evaluators"]["reconstruction"]["metrics"], report["evaluators"]["downstream"]["metrics"]
    return {"eval_fvu": round(rec["fvu"], 4), "l0": rec["l0"], "dead": rec["dead"], "downstream_score": round(down["score"], 4)}


def _distinct_streamed(rows: int, holdout: int, batch: int, window: int) -> float:
    """Distinct sequences per batch of the streamed reader over the hf source's row order: the
    source's own windows (tokenized, no forward pass), in the order its stream yields them."""
    hf = ff.get_registry().get("source", "hf")({})

    class Order(ff.ActivationSource):
        name = "hf-row-order"

        @property
        def d_in(self) -> int:
            return 1

        def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
            ids = np.concatenate([np.full(w.rows, w.seq_id) for group in hf._groups(hf.documents()) for w in group])[skip_rows:]
            ids = ids[: rows + holdout - skip_rows]
            for s in range(0, len(ids), 65536):
                yield {"acts": np.zeros((len(ids[s : s + 65536]), 1), np.float32), "seq_ids": ids[s : s + 65536]}

    src = Order()
    reader = StreamedReader(StreamPlan.make(src, 1, holdout, window), src, batch, columns=("acts", "seq_ids"), seed=0)
    return float(np.mean([len(np.unique(b["seq_ids"].numpy())) for b in reader]))


def minilm(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    common = ["--trainer", "topk", "-o", f"k={args.k}", "-o", f"d_dict={args.d_dict}", "--rows", args.rows, "--batch-size", args.batch_size,
              "--seed", 0, "-t", f"holdout_rows={args.holdout}"]
    result: dict[str, Any] = {"model": "all-MiniLM-L6-v2 encoder.layer.3 output (hf source defaults)", "rows": args.rows,
                              "holdout_rows": args.holdout, "batch_size": args.batch_size, "k": args.k, "d_dict": args.d_dict}
    print("[stream minilm] eval store", file=sys.stderr, flush=True)
    _timed([*FF, "cache", "--source", "hf", "-o", "seed=1", "--rows", args.eval_rows, "--store", work / "eval"])
    print("[stream minilm] streamed", file=sys.stderr, flush=True)
    streamed = _run([*FF, "train", "--source", "hf", *common, "--out", work / "streamed"])
    window = json.loads((work / "streamed" / "config.json").read_text())["stream"]["buffer_rows"]
    result["streamed"] = {"wall_s": streamed["wall_s"], "peak_rss_MiB": streamed["peak_rss_MiB"], "window_rows": window,
                          **_evaluate(work / "streamed", work / "eval")}
    print("[stream minilm] cache then train", file=sys.stderr, flush=True)
    cached = _run([*FF, "cache", "--source", "hf", "--rows", args.rows + args.holdout, "--store", work / "cache"])
    trained = _run([*FF, "train", "--store", work / "cache", *common, "--out", work / "cached"])
    store = ff.open_store(work / "cache")
    loader = store.loader(batch_size=args.batch_size, columns=("acts", "seq_ids"), seed=0, drop_last=True)
    result["cache_then_train"] = {"wall_s": round(cached["wall_s"] + trained["wall_s"], 1), "cache_wall_s": cached["wall_s"],
                                  "train_wall_s": trained["wall_s"], "peak_rss_MiB": max(cached["peak_rss_MiB"], trained["peak_rss_MiB"]),
                                  "store_MiB": round(sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file()) / 2**20),
                                  "distinct_sequences_per_batch": round(float(np.mean([len(np.unique(b["seq_ids"].numpy())) for b in loader])), 1),
                                  **_evaluate(work / "cached", work / "eval")}
    seqs = store.read(0, store.rows, "seq_ids")
    rng = np.random.default_rng(0)
    uniform = float(np.mean([len(np.unique(seqs[rng.choice(store.rows, args.batch_size, replace=False)])) for _ in range(50)]))
    result["uniform_sampling_distinct_sequences_per_batch"] = round(uniform, 1)
    distinct = _distinct_streamed(args.rows, args.holdout, args.batch_size, window)
    result["streamed"]["distinct_sequences_per_batch"] = round(distinct, 1)
    result["streamed"]["mixing_ratio"] = round(distinct / uniform, 3)
    result["cache_then_train"]["mixing_ratio"] = round(result["cache_then_train"]["distinct_sequences_per_batch"] / uniform, 3)
    return result


# -- torchrun ---------------------------------------------------------------------------------------
def ddp(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    synth = ["-o", "d_in=64", "-o", "n_features=512", "-o", "mean_active=5"]
    common = ["--source", "synthetic", *synth, "--trainer", "topk", "-o", "d_dict=512", "-o", "k=8", "--rows", args.rows,
              "--batch-size", 1024, "--seed", 0, "--threads", 1, "-t", "holdout_rows=4096", "-t", "log_every=4"]
    runs = {"torchrun_2": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", 2, "--master-port", 29517, "-m", "featureforge.cli", "train", *common],
            "one_process_2_shards": [*FF, "train", *common, "-t", "data_shards=2"],
            "one_process_1_shard": [*FF, "train", *common],
            "one_process_1_shard_seed1": [*FF, "train", *[("1" if c == 0 and prev == "--seed" else c) for prev, c in zip(["", *common], common)]]}
    result: dict[str, Any] = {"rows": args.rows, "batch_size": 1024, "runs": {}}
    curves = {}
    for label, cmd in runs.items():
        print(f"[stream ddp] {label}", file=sys.stderr, flush=True)
        out = _timed([*cmd, "--out", work / label])
        curves[label] = [(m["step"], m["fvu"]) for m in read_metrics(work / label) if "fvu" in m]
        result["runs"][label] = {"wall_s": out["wall_s"], "final_fvu": curves[label][-1][1], "log_lines": len(curves[label])}
    base = dict(curves["torchrun_2"])
    for label in ("one_process_2_shards", "one_process_1_shard", "one_process_1_shard_seed1"):
        diffs = [abs(base[s] - f) for s, f in curves[label] if s in base]
        result["runs"][label]["max_abs_fvu_difference_to_torchrun_2"] = max(diffs)
    seeds = [abs(a - b) for (s, a), (_, b) in zip(curves["one_process_1_shard"], curves["one_process_1_shard_seed1"])]
    result["seed_noise_max_abs_fvu_difference_1_shard_seed0_vs_seed1"] = max(seeds)
    result["curves"] = curves
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("mixing")
    m.add_argument("--rows", type=int, default=1 << 20)
    m.add_argument("--seq-len", type=int, default=128)
    m.add_argument("--batch-size", type=int, default=4096)
    m.add_argument("--windows", type=int, nargs="+", default=[65536, 131072, 262144, 524288, 786432, 1048576])
    n = sub.add_parser("minilm")
    n.add_argument("--rows", type=int, default=131072)
    n.add_argument("--holdout", type=int, default=16384)
    n.add_argument("--eval-rows", type=int, default=16384)
    n.add_argument("--batch-size", type=int, default=4096)
    n.add_argument("--k", type=int, default=16)
    n.add_argument("--d-dict", type=int, default=3072)
    n.add_argument("--work", default="stores/stream-bench")
    d = sub.add_parser("ddp")
    d.add_argument("--rows", type=int, default=65536)
    d.add_argument("--work", default="stores/stream-ddp")
    for p in (m, n, d):
        provenance.add_out_argument(p, "stream")
    args = ap.parse_args()
    result = {"benchmark": f"stream {args.what}", "argv": sys.argv[1:], **{"mixing": mixing, "minilm": minilm, "ddp": ddp}[args.what](args)}
    provenance.emit(result, provenance.out_path(args.out, f"stream_{args.what}"))


if __name__ == "__main__":
    main()
