"""Rows/s of the built-in ``synthetic`` source and of caching it, at a few sizes.

Synthetic rows are computed without order-dependent BLAS reductions (issue #12: their bytes
must not depend on threads, chunk size, writer count or BLAS kernel); this measures what that
costs. Prints one JSON object: for each configuration, ``source_rows_per_s`` (``rows()`` over
whole 4096-row blocks) and ``cache_rows_per_s`` (``featureforge.cache`` to a local store, float32),
each the best of ``--repeats`` runs; also written to ``--out`` with the run's provenance (thread settings
included).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synthetic_throughput.py [--rows 32768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("FEATUREFORGE_PROGRESS", "0")

import featureforge as ff  # noqa: E402

import provenance  # noqa: E402

CONFIGS = {
    "default_d64": {"d_in": 64, "n_features": 512},
    "downstream_d64": {"d_in": 64, "n_features": 512, "downstream": True},
    "gated_d64": {"d_in": 64, "n_features": 512, "downstream": True, "readout": "gated"},
    "default_d768": {"d_in": 768, "n_features": 4096},
    "downstream_d768": {"d_in": 768, "n_features": 4096, "downstream": True},
}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma list of configurations")
    provenance.add_out_argument(parser, "synthetic_throughput")
    args = parser.parse_args()
    out: dict = {"rows": args.rows}
    names = [n for n in CONFIGS if not args.only or n in args.only.split(",")]
    for name in names:
        options = CONFIGS[name]
        src = ff.make_source("synthetic", options)
        src.rows(0, 1)  # ground truth built outside the timing
        source_s = best(lambda: src.rows(0, args.rows), args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            cache_s = best(lambda: ff.cache("synthetic", options, store=os.path.join(tmp, "s.zarr"), rows=args.rows,
                                            overwrite=True, progress=False), args.repeats)
        out[name] = {"source_rows_per_s": round(args.rows / source_s), "cache_rows_per_s": round(args.rows / cache_s)}
    provenance.emit(out, provenance.out_path(args.out, "synthetic_throughput"))


if __name__ == "__main__":
    main()
