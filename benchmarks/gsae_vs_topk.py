"""g-SAE vs TopK at equal k on the synthetic source with a downstream loss (quiet-but-important features).

Caches ``synthetic -o downstream=true`` (important features are quiet: coefficients x quiet_scale,
but weigh important_weight in the readout loss), trains ``topk`` and ``gsae`` (one or more betas /
gradient normalisations) with the same seed, data and k, and prints one JSON object:

* mmcs_important / mmcs_other: mean over true features (that subset) of the best cosine with a decoder row,
* recovered_important / recovered_other: fraction of that subset with best cosine > 0.9,
* fvu: held-out FVU with plain TopK encoding (inference; no gradients),
* fvu_grad_select: held-out FVU when selecting with the held-out gradients (as in training),
* downstream_err: mean over held-out rows of 1/2 sum_i a_i (f_i . (x - x_hat))^2 (plain TopK encoding):
  the readout loss's sensitivity to the reconstruction error, relative to the same for x_hat = mean(x).

    python benchmarks/gsae_vs_topk.py [--rows 300000] [--k 4] [--betas 1,4,16] [--norms row,batch_rms]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featureforge as ff
from featureforge.builtin.synthetic import SyntheticSource


def measure(run: Path, store: Any, source: SyntheticSource, eval_rows: tuple[int, int]) -> dict[str, float]:
    from featureforge_sae.gsae import gsae_encode

    d = ff.load(run)
    truth = source.ground_truth()
    feats = torch.from_numpy(truth["features"]).double()
    imp = truth["important"]
    dec = d.decoder_directions.detach().double()
    cos = (feats / feats.norm(dim=1, keepdim=True)) @ (dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    best = cos.max(1).values.numpy()
    rows = source.rows(*eval_rows)
    x = torch.from_numpy(rows["acts"])
    g = torch.from_numpy(rows["grads"])
    with torch.no_grad():
        x_hat = d.decode(d.encode(x))
        var = (x - x.mean(0)).pow(2).sum()
        fvu = float((x - x_hat).pow(2).sum() / var)
        s = float(d.input_scale)
        cfg = json.loads((run / "config.json").read_text())
        o = cfg["options"]
        vals, idx, *_ = gsae_encode(d, x * s, g / s, d.k, float(o.get("beta", 4.0)), o.get("grad_norm", "row"), "z")
        xg = (torch.zeros(x.shape[0], d.d_dict).scatter_(1, idx, vals) @ d.W_dec + d.b_dec) / s
        fvu_g = float((x - xg).pow(2).sum() / var)
        a = torch.from_numpy(truth["importance"]).float()
        f = torch.from_numpy(truth["features"])

        def readout(e: torch.Tensor) -> float:
            return float((0.5 * ((e @ f.T) ** 2 * a).sum(1)).mean())

        ds = readout(x - x_hat) / readout(x - x.mean(0))
    return {
        "mmcs_important": float(best[imp].mean()),
        "mmcs_other": float(best[~imp].mean()),
        "recovered_important": float((best[imp] > 0.9).mean()),
        "recovered_other": float((best[~imp] > 0.9).mean()),
        "fvu": fvu,
        "fvu_grad_select": fvu_g,
        "downstream_err": ds,
    }


def run(rows: int = 300_000, k: int = 4, betas: tuple[float, ...] = (1.0, 4.0, 16.0), norms: tuple[str, ...] = ("row",),
        d_in: int = 64, n_features: int = 256, d_dict: int = 512, mean_active: float = 6.0, seed: int = 0,
        batch_size: int = 1024, threads: int = 1, workdir: str | None = None) -> dict:
    src_opts = dict(d_in=d_in, n_features=n_features, mean_active=mean_active, downstream=True, seed=seed)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="gsae_bench_"))
    store_path = tmp / "store"
    ff.cache("synthetic", src_opts, store=str(store_path), rows=rows, rows_per_chunk=8192, overwrite=True, progress=False)
    store = ff.open_store(str(store_path))
    source = SyntheticSource(**src_opts)
    eval_rows = (rows, rows + 16384)  # fresh rows past the cached ones: never trained on
    common = dict(store=str(store_path), batch_size=batch_size, seed=seed, threads=threads, progress=False,
                  overwrite=True, warmup_steps=50, dead_after=200_000)
    out: dict = {"setup": {**src_opts, "rows": rows, "k": k, "d_dict": d_dict, "batch_size": batch_size,
                           "eval_rows": list(eval_rows)}, "runs": {}}
    configs = [("topk", "topk", {})] + [(f"gsae beta={b} grad_norm={n}", "gsae", {"beta": b, "grad_norm": n})
                                        for n in norms for b in betas]
    for label, trainer, extra in configs:
        started = time.perf_counter()
        run_dir = tmp / label.replace(" ", "_").replace("=", "")
        ff.train(trainer, {"k": k, "d_dict": d_dict, "dead_after": 200_000, **extra}, out=str(run_dir),
                 **{kk: v for kk, v in common.items() if kk != "dead_after"})
        res = measure(run_dir, store, source, eval_rows)
        res["seconds"] = round(time.perf_counter() - started, 1)
        out["runs"][label] = res
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--betas", default="1,4,16")
    p.add_argument("--norms", default="row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    res = run(rows=a.rows, k=a.k, betas=tuple(float(b) for b in a.betas.split(",")), norms=tuple(a.norms.split(",")),
              seed=a.seed, threads=a.threads, workdir=a.workdir)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
