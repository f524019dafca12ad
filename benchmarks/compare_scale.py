"""`featureforge compare` on two wide TopK dictionaries: time and peak memory in bounded memory.

Two TopK SAEs (briefly trained, seeds 0 and 1) on a synthetic store, compared by decoder, encoder
and activation correlation over the eval rows (sparse Hungarian once m_a·m_b exceeds the dense
limit). Prints one JSON object with provenance.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--d-dict", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rows", type=int, default=65536, help="store rows (the eval rows are its held-out 5%% unless --eval-rows)")
    parser.add_argument("--eval-rows", type=int, default=None)
    parser.add_argument("--memory", type=int, default=1 << 25)
    parser.add_argument("--threads", type=int, default=2)
    provenance.add_out_argument(parser, "compare_scale")
    args = parser.parse_args()

    import torch

    import featureforge as ff

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = ff.cache("synthetic", {"d_in": args.d_in, "n_features": 4 * args.d_dict, "mean_active": 16.0}, store=str(root / "s"),
                         rows=args.rows, rows_per_chunk=max(args.rows // 16, 1024), progress=False)
        runs = ff.train("topk", {"k": args.k, "d_dict": args.d_dict}, store=store.url, out=str(root / "seeds"), seed="0,1",
                        batch_size=1024, rows=4 * 1024, progress=False)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        report = ff.compare(runs, store=store.url, out=root / "cmp", rows=args.eval_rows, memory=args.memory, progress=False, baseline=False)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pair = report["pairs"][0]
    result = {
        "d_in": args.d_in, "d_dict": args.d_dict, "k": args.k, "eval_rows": report["rows"]["rows"], "memory_floats": args.memory,
        "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024, 1), "rss_before_mib": round(before / 1024, 1),
        "match": {kind: pair[kind]["match"] for kind in ("decoder", "encoder", "activation")},
        "shared_fraction": {kind: pair[kind]["shared_fraction"] for kind in ("decoder", "encoder", "activation")},
        "paulo_belrose": pair["paulo_belrose"]["shared_fraction"],
    }
    provenance.emit({**provenance.provenance(), "result": result}, provenance.out_path(args.out, "compare_scale"))


if __name__ == "__main__":
    main()
