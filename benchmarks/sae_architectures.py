"""Quality of the featureforge-sae trainers on synthetic ground truth, at matched L0.

Caches the synthetic source (known unit features; default: d_in 32, 64 features, ~3 active per
row, 1% noise, as the plugin's quality tests), trains each requested trainer with the same data,
seed and steps through ``featureforge.train``, and prints one JSON object (also written to ``--out``,
with the run's provenance) with, per trainer:

* mmcs: mean over true features of the best cosine with a decoder row,
* recovered: fraction of true features whose best cosine exceeds 0.9,
* fvu / l0: held-out fraction of variance unexplained and mean active latents per row (inference
  encoding: thresholds for batchtopk/matryoshka/jumprelu, per-row top-k for topk),
* for matryoshka also the FVU of each nested prefix on its own (``fvu_prefix``),
* seconds: wall time of the training call.

    python benchmarks/sae_architectures.py [--rows 240000] [--trainers topk,batchtopk,jumprelu,matryoshka] \
        [-o jumprelu.l0_coef=0.02] [-o matryoshka.prefixes=16,32,64,128]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import featureforge

import provenance

STORE = {"d_in": 32, "n_features": 64, "mean_active": 3.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 1}
BASE = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "matryoshka": {"k": 4}, "jumprelu": {}, "relu": {}}


def _scores(d: Any, truth: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    W = torch.nn.functional.normalize(d.decoder_directions.detach().float(), dim=1)
    F = torch.nn.functional.normalize(truth.float(), dim=1)
    best = (F @ W.T).max(1).values
    with torch.no_grad():
        codes = d.encode(x)
        x_hat = d.decode(codes)
        total = (x - x.mean(0)).pow(2).sum()
        out = {
            "mmcs": round(float(best.mean()), 4),
            "recovered": round(float((best > 0.9).float().mean()), 4),
            "fvu": round(float((x - x_hat).pow(2).sum() / total), 4),
            "l0": round(float((codes > 0).sum(1).float().mean()), 3),
            "dead": round(float(((codes > 0).sum(0) == 0).float().mean()), 4),
        }
        for size in getattr(d, "prefixes", ())[:-1]:
            part = d.decode(d.prefix_codes(codes, size))
            out.setdefault("fvu_prefix", {})[size] = round(float((x - part).pow(2).sum() / total), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=240_000, help="training rows per trainer")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--d-dict", type=int, default=128)
    ap.add_argument("--trainers", default="topk,batchtopk,jumprelu,matryoshka")
    ap.add_argument("-o", "--option", action="append", default=[], help="TRAINER.KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=None, help="learning rate for every trainer (default: each trainer's own)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--compact", action="store_true", help="print one line of JSON (the --out file is indented either way)")
    provenance.add_out_argument(ap, "sae_architectures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sae-arch-"))
    store = featureforge.cache("synthetic", STORE, store=str(work / "store.zarr"), rows=65536, rows_per_chunk=8192, progress=False) \
        if not (work / "store.zarr").exists() else featureforge.open_store(str(work / "store.zarr"))
    truth = torch.as_tensor(store.ground_truth()["features"])
    x = torch.as_tensor(store.read(0, 8192)).float()
    results: dict[str, Any] = {"store": STORE, "rows": args.rows, "batch_size": args.batch_size, "d_dict": args.d_dict, "trainers": {}}
    for name in args.trainers.split(","):
        options: dict[str, Any] = {**BASE.get(name, {}), "d_dict": args.d_dict}
        for item in args.option:
            trainer, _, kv = item.partition(".")
            if trainer == name:
                key, _, value = kv.partition("=")
                options[key] = value
        start = time.perf_counter()
        [run] = featureforge.train(name, [f"{k}={v}" for k, v in options.items()], store=store, out=str(work / name), rows=args.rows, batch_size=args.batch_size,
                                   seed=args.seed, threads=1, progress=False, lr=args.lr, overwrite=True)
        seconds = time.perf_counter() - start
        d = featureforge.load(run)
        results["trainers"][name] = {"options": options, **_scores(d, truth, x), "seconds": round(seconds, 1)}
    out = provenance.out_path(args.out, "sae_architectures")
    text = provenance.save(results, out)
    print(json.dumps(results) if args.compact else text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
