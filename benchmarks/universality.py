"""Universal neurons at CPU scale: stdlib GPT-2s by seed, their checkpoints, and the CE impact of ablation.

The setup of Gurnee et al. 2024 ("Universal Neurons in GPT2 Language Models") and Nandan et al.
("Universal Neurons in GPT-2: Emergence, Persistence, and Functional Impact"), shrunk to what two
CPU cores train in minutes. Train the models first, each with checkpoints, on the same data::

    for s in 0 1 2; do featureforge tiny-lm --out M/seed$s --seed $s --minutes 3 --checkpoints 2 --layers 2 --d-model 64; done
    python benchmarks/universality.py M/seed0 M/seed1 M/seed2 --work W

For every model, checkpoint and layer the MLP's GELU output (``transformer.h.L.mlp.act``) is cached
over the same stdlib tokens and made a ``neurons`` dictionary. Then, with ``featureforge compare``:

- universality: per layer, the final models compared pairwise; a neuron is universal when its mean
  excess correlation (best correlation with the other model's neurons minus the best with a random
  rotation of them) is above 0.5;
- emergence and persistence: the same at each checkpoint, and each model's checkpoints compared
  with its final state (how many neurons keep their identity: best partner in the final model is the
  same neuron with ρ > 0.5; how many of the final universal neurons were universal earlier);
- functional impact: ΔCE when the first model's universal neurons of a layer are mean-ablated, vs
  frequency-matched random sets of the same size;
- optionally (``--sae``) TopK SAEs on each final layer compared across models by activation.

Prints one JSON object (with provenance) and writes it under benchmarks/results/universality/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


import provenance


def _states(model: Path) -> list[tuple[str, Path]]:
    """(label, folder) of a tiny-lm model's checkpoints in training order, then its final state."""
    report = json.loads((model / "train_report.json").read_text())
    out = [(f"step{c['step']}", model / "checkpoints" / Path(c["path"]).name) for c in report.get("checkpoints", [])]
    return out + [(f"final-step{report['steps']}", model)]


def _cache(ff: Any, folder: Path, layer: int, store: Path, rows: int, context: int) -> Any:
    if (store / "zarr.json").exists():
        opened = ff.open_store(str(store))
        if opened.complete:
            return opened
    opts = {"model": str(folder), "hook": f"transformer.h.{layer}.mlp.act", "context_size": context, "batch_size": 16, "device": "cpu"}
    return ff.cache("hf", opts, store=str(store), rows=rows, rows_per_chunk=4096, progress=False, overwrite=True)


def _neurons(ff: Any, store: Any, out: Path, eval_rows: int) -> Path:
    if not (out / "config.json").exists():
        ff.train("neurons", store=store.url, out=str(out), holdout_rows=eval_rows, progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="tiny-lm model folders (one per seed, trained with --checkpoints)")
    parser.add_argument("--work", required=True, help="folder for stores, neuron runs and comparisons (reused when rerun)")
    parser.add_argument("--rows", type=int, default=65536, help="rows (tokens) cached per model, checkpoint and layer")
    parser.add_argument("--eval-rows", type=int, default=16384, help="rows the correlations are computed on")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--ablate-sequences", type=int, default=48)
    parser.add_argument("--sae", action="store_true", help="also train TopK SAEs on the final layers and compare them across models")
    provenance.add_out_argument(parser, "universality")
    args = parser.parse_args()

    import torch

    import featureforge as ff

    torch.set_num_threads(1)
    started = time.perf_counter()
    work = Path(args.work)
    models = [Path(m) for m in args.models]
    states = [_states(m) for m in models]
    n_states = min(len(s) for s in states)
    layers = json.loads((models[0] / "config.json").read_text())["n_layer"]
    runs: dict[tuple[int, int, int], Path] = {}  # (model, state, layer) -> neurons run
    stores: dict[tuple[int, int, int], Any] = {}
    for m, model_states in enumerate(states):
        for t, (label, folder) in enumerate(model_states[-n_states:]):
            for layer in range(layers):
                key = (m, t, layer)
                stores[key] = _cache(ff, folder, layer, work / "stores" / f"m{m}-t{t}-L{layer}", args.rows, args.context)
                runs[key] = _neurons(ff, stores[key], work / "neurons" / f"m{m}-t{t}-L{layer}", args.eval_rows)
        print(f"cached model {m}", file=sys.stderr)

    result: dict[str, Any] = {"models": [str(m) for m in models], "states": [[lab for lab, _ in s[-n_states:]] for s in states],
                              "layers": layers, "rows": args.rows, "eval_rows": args.eval_rows, "universality": [], "persistence": [],
                              "impact": [], "sae": []}
    universal_sets: dict[tuple[int, int, int], set[int]] = {}
    for t in range(n_states):
        for layer in range(layers):
            keys = [(m, t, layer) for m in range(len(models))]
            out = work / "compare" / f"t{t}-L{layer}"
            report = ff.compare([runs[k] for k in keys], store=[stores[k].url for k in keys], out=out, progress=False)
            for m, key in enumerate(keys):
                universal_sets[key] = set(json.loads((out / "runs" / f"{m}.json").read_text())["universal"])
            result["universality"].append({
                "state": t, "layer": layer,
                "universal_fraction": [r["universal_fraction"] for r in report["runs"]],
                "excess_mean": [r["excess_correlation_mean"] for r in report["runs"]],
                "mean_best_correlation": [r["mean_best_correlation"] for r in report["runs"]],
                "baseline_mean_best": [p["activation"]["baseline_mean_best"] for p in report["pairs"]],
                "shared_at_0.5": [p["activation"]["shared_fraction"]["0.5"] for p in report["pairs"]],
            })
            print(f"universality state {t} layer {layer}: {result['universality'][-1]['universal_fraction']}", file=sys.stderr)
    final = n_states - 1
    for m in range(len(models)):
        for layer in range(layers):
            keys = [(m, t, layer) for t in range(n_states)]
            out = work / "compare" / f"m{m}-L{layer}-over-training"
            over = ff.compare([runs[k] for k in keys], store=[stores[k].url for k in keys], out=out, progress=False, baseline=False)
            same_unit = {tuple(p["index"]): p["same_unit"] for p in over["pairs"]}
            kept = []
            for t in range(n_states - 1):
                data = json.loads((out / "pairs" / f"{t}-{final}.json").read_text())
                act = data["a_activation"]
                same = [i for i, (b, s) in enumerate(zip(act["best"], act["best_score"])) if b == i and s is not None and s > 0.5]
                kept.append(len(same) / len(act["best"]))
            fin = universal_sets[(m, final, layer)]
            earlier = [len(fin & universal_sets[(m, t, layer)]) / max(len(fin), 1) for t in range(n_states - 1)]
            result["persistence"].append({"model": m, "layer": layer, "same_neuron_fraction_vs_final": kept,
                                          "same_neuron_mean_correlation_vs_final": [same_unit[(t, final)]["mean_correlation"] for t in range(n_states - 1)],
                                          "final_universal": len(fin), "final_universal_already_universal": earlier})
    for layer in range(layers):
        key = (0, final, layer)
        data = json.loads((work / "compare" / f"t{final}-L{layer}" / "runs" / "0.json").read_text())
        units, chosen = sorted(universal_sets[key]), "universal (excess correlation > 0.5)"
        if not units:  # none pass the paper's bar: ablate the most universal 5% instead, and say so
            excess = data["excess_correlation"]
            units = sorted(sorted(range(len(excess)), key=lambda i: -excess[i])[: max(1, len(excess) // 20)])
            chosen = "no neuron is universal; the 5% of highest excess correlation"
        impact = ff.comparison.ablation_impact(runs[key], units, store=stores[key], frequency=data["firing_frequency"], random_sets=3,
                                              max_sequences=args.ablate_sequences)
        impact.pop("random_sets")
        result["impact"].append({"layer": layer, "ablated": chosen, **impact})
        print(f"impact layer {layer}: {impact}", file=sys.stderr)
    if args.sae:
        for layer in range(layers):
            keys = [(m, final, layer) for m in range(len(models))]
            saes = []
            for m, key in enumerate(keys):
                out = work / "sae" / f"m{m}-L{layer}"
                if not (out / "config.json").exists():
                    ff.train("topk", {"k": 16, "d_dict": 1024}, store=stores[key].url, out=str(out), holdout_rows=args.eval_rows,
                             progress=False, epochs=2)
                saes.append(out)
            report = ff.compare(saes, store=[stores[k].url for k in keys], out=work / "compare" / f"sae-L{layer}", progress=False, baseline=False)
            result["sae"].append({"layer": layer, "mean_best_correlation": [r["mean_best_correlation"] for r in report["runs"]],
                                  "shared_at_0.5": [p["activation"]["shared_fraction_live"]["0.5"] for p in report["pairs"]],
                                  "shared_at_0.7": [p["activation"]["shared_fraction_live"]["0.7"] for p in report["pairs"]]})
    result["seconds"] = round(time.perf_counter() - started, 1)
    provenance.emit({**provenance.provenance(), "result": result}, provenance.out_path(args.out, "universality"))


if __name__ == "__main__":
    main()
