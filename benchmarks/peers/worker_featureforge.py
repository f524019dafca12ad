"""Train featureforge's ``topk`` trainer through ``featureforge.train`` (run with the project venv's python).

The loop reads the store itself (chunk-shuffled, prefetched, the eval chunks held out) and
normalises rows by the store's scale, so its inputs are the other workers' inputs. rows/s comes
from ``metrics.jsonl``'s per-window ``rows_per_s`` (window wall time: reading + step + logging),
the first window excluded as warm-up. Evaluation uses the dictionary's own
``encode_normalised``/``decode_normalised`` on the eval rows in training units, like the peers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--store", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--holdout-rows", type=int, required=True, help="passed to featureforge.train (same chunks as the eval rows)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--size-option", default="d_dict", help="name of the topk option holding the dictionary width")
    p.add_argument("-o", "--option", action="append", default=[], help="extra topk option key=value")
    p.add_argument("--profile-steps", type=int, default=0, help="instead: profile this many steps and write profile.txt")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import featureforge
    import featureforge.runtime

    featureforge.runtime.short_openmp_spin()  # before torch, as the featureforge command does

    torch = common.setup_torch(args.threads)

    options = {args.size_option: args.d_sae, "k": args.k}
    for pair in args.option:
        key, _, value = pair.partition("=")
        options[key] = value
    run_dir = out / "run"
    config = dict(batch_size=args.batch_size, dtype=args.dtype, threads=args.threads, seed=args.seed,
                  holdout_rows=args.holdout_rows, log_every=args.log_every, device="cpu")
    if args.profile_steps:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            featureforge.train("topk", options, store=args.store, out=run_dir, overwrite=True, progress=False,
                               rows=args.profile_steps * args.batch_size, **config)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        table += "\n\nby input shape:\n" + prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)
        (out / "profile.txt").write_text(table)
        print(table)
        return

    steps = args.train_rows // args.batch_size
    t0 = time.perf_counter()
    featureforge.train("topk", options, store=args.store, out=run_dir, overwrite=True, progress=False,
                       rows=steps * args.batch_size, **config)
    wall = time.perf_counter() - t0
    from featureforge.run import read_metrics
    lines = read_metrics(run_dir)
    windows, prev = [], 0
    for line in lines:  # (rows, seconds) per logging window
        n = line["rows"] - prev
        prev = line["rows"]
        windows.append((n, n / line["rows_per_s"]))
    timed = windows[1:] if len(windows) > 1 else windows
    rows_timed, secs = sum(n for n, _ in timed), sum(s for _, s in timed)
    timing = {
        "steps": steps,
        "warmup_rows_excluded": windows[0][0] if len(windows) > 1 else 0,
        "rows_per_s": rows_timed / secs if secs > 0 else None,
        "rows_per_s_incl_read": rows_timed / secs if secs > 0 else None,
        "rows_per_s_median_step": float(np.median([n / s for n, s in timed])) if timed else None,
        "train_wall_s": wall,
        "timing_source": f"metrics.jsonl rows_per_s windows of {args.log_every} steps (reading + step), first window excluded",
    }

    dictionary = featureforge.load(run_dir)
    dictionary.eval()
    rows = common.NpyRows(args.data)

    # Eval rows arrive as raw rows times the store's scale (the peers' units). The loaded
    # dictionary's training units are raw rows times its input_scale, which is 1 once the run
    # folder's weights are folded to raw units (config.json weights_units): convert both ways.
    to_dict = float(dictionary.input_scale) / args.scale

    def encode_decode(x):
        x = x * to_dict
        if hasattr(dictionary, "sparse_encode"):  # the topk dictionary's own sparse path
            values, indices = dictionary.sparse_encode(x)
            return values, indices, dictionary.sparse_decode(values, indices) / to_dict
        codes = dictionary.encode_normalised(x)
        top = codes.abs().topk(args.k, dim=1)
        return codes.gather(1, top.indices), top.indices, dictionary.decode_normalised(codes) / to_dict

    common.write_eval(out, rows, args, encode_decode, dictionary.decoder_directions, torch)
    cfg = json.loads((run_dir / "config.json").read_text())
    common.finish(out, {
        "system": f"featureforge-{args.dtype}",
        "versions": common.versions("featureforge", cfg.get("trainer_distribution") or "featureforge-sae", "torch"),
        "api": "featureforge.train('topk', ...) on the Zarr store",
        "settings": {"options": cfg.get("options"), "lr": max(line["lr"] for line in lines) if lines else None, "training": cfg.get("training"),
                     "train_rows": steps * args.batch_size, "dtype": args.dtype, "threads": args.threads},
        "timing": timing,
        "train_fvu_log": [[line["step"], line["fvu"]] for line in lines[::5]] + ([[lines[-1]["step"], lines[-1]["fvu"]]] if lines else []),
    })


if __name__ == "__main__":
    main()
