"""Multifaceted feature visualization on planted truth: facets vs. true features, feature splitting, vision.

Three experiments, each printed as one part of a JSON object (and written to ``--out``):

* ``planted``: union latents ``ReLU(sum_{i in S} f_i . x - b)`` over 2-3 true features of a
  synthetic store; adjusted Rand index of the facets of their top examples vs. the true member,
  over examples holding one member (``ari_single``) and all examples (``ari_all``);
* ``splitting``: a narrow and a wide TopK dictionary trained on the same synthetic store; for each
  narrow latent with 2+ facets, the wide latent each facet matches (centroid cosine with decoder
  rows; and the wide latent firing most on the facet's examples);
* ``vision``: a small CNN on scikit-learn's digits with pairs of digits merged into one class;
  for each class unit, facets of its top images, one synthetic image per facet, its activation vs.
  the best real image, distances between facets and the purity of each facet's digits.

    python benchmarks/multifaceted_quality.py [--workdir DIR] [--out benchmarks/results/multifaceted_quality/multifaceted_quality.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featureforge as ff
from featureforge_multifaceted.splitting import facet_splitting
from featureforge_testbeds.planted import planted_ari
import provenance

UNIONS = [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9], [10, 11], [12, 13, 14], [15, 16], [17], [18]]


def planted(workdir: Path) -> dict[str, Any]:
    options = {"d_in": 64, "n_features": 128, "mean_active": 2.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 3}
    store = ff.cache("synthetic", options, store=str(workdir / "planted.zarr"), rows=65536, rows_per_chunk=8192, progress=False, overwrite=True)
    t0 = time.perf_counter()
    results = planted_ari(store, UNIONS, top_n=300)
    rows = [dataclasses.asdict(r) for r in results]
    multi = [r for r in results if len(r.members) > 1]
    return {
        "store": options | {"rows": 65536},
        "top_n": 300,
        "latents": rows,
        "mean_ari_single_union_latents": round(float(np.mean([r.ari_single for r in multi])), 4),
        "mean_ari_all_union_latents": round(float(np.mean([r.ari_all for r in multi])), 4),
        "facets_equal_members": sum(r.facets == len(r.members) for r in results) / len(results),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def splitting(workdir: Path) -> dict[str, Any]:
    options = {"d_in": 64, "n_features": 128, "mean_active": 2.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 5}
    store = ff.cache("synthetic", options, store=str(workdir / "split.zarr"), rows=65536, rows_per_chunk=8192, progress=False, overwrite=True)
    runs = {}
    for name, d_dict in (("narrow", 48), ("wide", 256)):
        ff.train("topk", {"k": 2, "d_dict": d_dict}, store=store.url, out=str(workdir / name), epochs=3, batch_size=1024, progress=False, overwrite=True)
        report = ff.evaluate(str(workdir / name), store, ["ground-truth"])
        gt = report["evaluators"]["ground-truth"]["metrics"]
        runs[name] = {"d_dict": d_dict, "k": 2, "mmcs": round(gt["mmcs"], 4), "recovered": round(gt["recovered"], 4)}
    result = facet_splitting(ff.load(workdir / "narrow"), ff.load(workdir / "wide"), store)
    return {"store": options | {"rows": 65536}, "runs": runs, **result}


def vision() -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    from featureforge_multifaceted.vision import Unit, facet_synthesis
    from featureforge_testbeds.digits import MERGED, merged_digits, train_cnn

    x, merged, digit = merged_digits()
    model, accuracy = train_cnn(x, merged, epochs=5)
    units = []
    for c, pair in enumerate(MERGED):
        r = facet_synthesis(model, x, Unit("head", c), "fc", top_n=120)
        s = r.summary()
        k = s["facets"]
        truth = digit[r.top_indices].numpy()
        purity = [float(np.bincount(truth[r.labels == f]).max() / (r.labels == f).sum()) for f in range(k)]
        off = [s["pixel_distances"][i][j] for i in range(k) for j in range(k) if i < j]
        units.append(s | {"digits": list(pair), "ari_vs_digit": round(float(adjusted_rand_score(truth, r.labels)), 4),
                          "facet_purity": [round(p, 4) for p in purity], "min_pixel_distance": min(off) if off else None,
                          "beats_best_real": bool(min(s["synthetic_activations"]) > s["best_real_activation"])})
    return {"cnn_held_out_accuracy": round(accuracy, 4), "units": units,
            "all_beat_best_real": all(u["beats_best_real"] for u in units)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="Folder for stores and runs (default: a temporary one).")
    provenance.add_out_argument(parser, "multifaceted_quality")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        out = {"planted": planted(workdir), "splitting": splitting(workdir), "vision": vision()}
        out["seconds"] = round(time.perf_counter() - t0, 1)
    provenance.emit(out, provenance.out_path(args.out, "multifaceted_quality"))


if __name__ == "__main__":
    main()
