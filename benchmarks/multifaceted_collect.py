"""Throughput of the facets evaluator's streaming pass (``featureforge_multifaceted.collect``).

Caches a synthetic store (``--rows`` x ``--d-in``), builds an untrained TopK dictionary of
``--d-dict`` latents (encoding costs the same trained or not) and runs one ``collect`` pass
keeping ``--top-n`` top rows and a ``--sample`` uniform sample per latent. Prints one JSON object
with rows/s of the pass and of encoding alone (the floor set by the dictionary's matmul), and the
memory the kept state takes (fixed by the dictionary, whatever the store's size).

    python benchmarks/multifaceted_collect.py [--rows 1048576] [--d-in 64] [--d-dict 16384] [--k 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import featureforge as ff
from featureforge_multifaceted.collect import HIST_BINS, collect
import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 20)
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--d-dict", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--top-n", type=int, default=64)
    parser.add_argument("--sample", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    provenance.add_out_argument(parser, "multifaceted_collect")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        options = {"d_in": args.d_in, "n_features": 4 * args.d_in, "mean_active": 4.0, "seed": 0}
        t0 = time.perf_counter()
        store = ff.cache("synthetic", options, store=str(workdir / "bench.zarr"), rows=args.rows, progress=False, overwrite=True)
        cache_s = time.perf_counter() - t0
        trainer = ff.get_registry().get("trainer", "topk")({"k": args.k, "d_dict": args.d_dict})
        torch.manual_seed(0)
        dictionary = trainer.build(args.d_in).eval()
        found = collect(dictionary, store, top_n=args.top_n, sample=args.sample)
        # Encoding alone over the same rows and batches: what no bookkeeping could beat.
        batch = int(min(8192, max(256, 2**24 // args.d_dict)))
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, store.rows, batch):
                dictionary.encode(torch.from_numpy(store.read(start, min(store.rows, start + batch))))
        encode_s = time.perf_counter() - t0
    kept = (found.top_values.numel() + found.sample_values.numel()) * 12 + found.histogram.numel() * 8
    out = {
        "rows": found.rows, "d_in": args.d_in, "d_dict": args.d_dict, "k": args.k, "top_n": args.top_n, "sample": args.sample,
        "threads": args.threads, "load_average": os.getloadavg()[0],
        "collect_seconds": round(found.seconds, 2), "collect_rows_per_second": round(found.rows_per_second),
        "encode_only_rows_per_second": round(found.rows / encode_s), "kept_state_mib": round(kept / 2**20, 1),
        "histogram_bins": HIST_BINS, "cache_seconds": round(cache_s, 1),
    }
    provenance.emit(out, provenance.out_path(args.out, "multifaceted_collect"))


if __name__ == "__main__":
    main()
