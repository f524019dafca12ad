"""Markdown tables of the MoE-X testbed results (moex_othello / moex_text JSON) for docs/methods/moex.md.

Written from the result files so the docs carry the measured numbers, not hand copies:

    python benchmarks/moex_tables.py benchmarks/results/moex_othello/moex_othello.json benchmarks/results/moex_text/moex_text.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = {"untrained": "untrained GELU model (same shape)", "gelu": "GELU MLP (dense)", "sae_topk_on_gelu": "TopK SAE on the GELU MLP",
        "switch": "Switch MoE", "moex": "MoE-X", "router_only": "ablation: router only", "relu_only": "ablation: ReLU only",
        "moex_upcycled": "MoE-X upcycled from GELU + fine-tune"}
COLUMNS = ("legal_top1", "val_loss", "coverage", "reconstruction", "linear_probe_f1_residual", "probe_gap_residual",
           "linear_probe_f1_colour", "probe_gap_colour")


def cell(stat: dict | None) -> str:
    return "–" if stat is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def othello_tables(r: dict) -> str:
    out = ["| model | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for name, label in ROWS.items():
        if name in r["table"]:
            out.append(f"| {label} | " + " | ".join(cell(r["table"][name].get(c)) for c in COLUMNS) + " |")
    out += ["", "Per seed (coverage / reconstruction / residual probe F1 / legal top-1):", "",
            "| model | " + " | ".join(f"seed {s}" for s in sorted(r["runs"]["untrained"])) + " |",
            "| --- |" + " --- |" * len(r["runs"]["untrained"])]
    for name, label in ROWS.items():
        if name not in r["runs"]:
            continue
        cells = []
        for seed in sorted(r["runs"]["untrained"]):
            row = r["runs"][name].get(seed)
            if row is None:
                cells.append("–")
                continue
            parts = [f"{row['coverage']:.3f}", f"{row['reconstruction']:.3f}"]
            parts += [f"{row[k]:.3f}" for k in ("linear_probe_f1_residual", "legal_top1") if k in row]
            cells.append(" / ".join(parts))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    layers = sorted(r["runs"]["untrained"][next(iter(r["runs"]["untrained"]))]["layers"], key=int)
    out += ["", "Residual probe F1 per layer (after block i), mean over seeds, full board / colour classes:", "",
            "| model | " + " | ".join(f"layer {i}" for i in layers) + " |", "| --- |" + " --- |" * len(layers)]
    for name, label in ROWS.items():
        per_seed = r["runs"].get(name, {})
        rows = [x for x in per_seed.values() if "layers" in x and "linear_probe_f1_residual" in next(iter(x["layers"].values()))]
        if not rows:
            continue
        cells = []
        for i in layers:
            full = sum(x["layers"][i]["linear_probe_f1_residual"] for x in rows) / len(rows)
            colour = sum(x["layers"][i]["linear_probe_f1_colour"] for x in rows) / len(rows)
            cells.append(f"{full:.3f} / {colour:.3f}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "Paired differences (same seed = same initialisation seed and data order), mean ± std over seeds:", "",
            "| difference | coverage | reconstruction | val loss | same sign on every seed (cov / rec) |", "| --- | --- | --- | --- | --- |"]
    for pair, stats in r["verdict_inputs"].items():
        if stats["coverage"] is None:
            continue
        signs = " / ".join("yes" if stats[m] and stats[m]["same_sign_all_seeds"] else "no" for m in ("coverage", "reconstruction"))
        out.append(f"| {pair} | {cell(stats['coverage'])} | {cell(stats['reconstruction'])} | {cell(stats['val_loss'])} | {signs} |")
    return "\n".join(out)


def criteria_table(r: dict) -> str:
    """Issue #16's bar per trained row: legal top-1 and the residual probe gaps over the untrained model, with the seeds meeting it."""
    out = ["| model | legal top-1 (min) | colour gap, best layer (min; layers) | colour gap, last layer | full-board gap, best layer (min) "
           "| full-board gap, last layer | train s/model | seeds meeting (a) and (b, colour) |", "| --- |" + " --- |" * 7]
    for name, label in ROWS.items():
        per_seed = r.get("criteria", {}).get(name)
        if not per_seed:
            continue
        rows = [per_seed[s] for s in sorted(per_seed)]

        def stat(key: str) -> str:
            vals = [x[key] for x in rows]
            mean = sum(vals) / len(vals)
            return f"{mean:.3f} ({min(vals):.3f})"

        def mean_of(key: str) -> str:
            return f"{sum(x[key] for x in rows) / len(rows):.3f}"

        layers = ",".join(str(x["best_layer_colour"]) for x in rows)
        secs = [r["runs"][name][s].get("train_seconds") for s in sorted(per_seed)]
        secs_cell = f"{min(secs):.0f}-{max(secs):.0f}" if all(x is not None for x in secs) else "–"
        met = sum(x["a_met"] and x["b_met_colour"] for x in rows)
        out.append(f"| {label} | {stat('legal_top1')} | {stat('gap_colour_best_layer')}; {layers} | {mean_of('gap_colour_last_layer')} | "
                   f"{stat('gap_full_best_layer')} | {mean_of('gap_full_last_layer')} | {secs_cell} | {met} of {len(rows)} |")
    return "\n".join(out)


def text_table(r: dict) -> str:
    out = ["| model | val loss (nats/byte), per seed | mean ± std | active MLP params | total params |", "| --- | --- | --- | --- | --- |"]
    for kind, per_seed in r["runs"].items():
        seeds = " / ".join(f"{per_seed[s]['val_loss']:.3f}" for s in sorted(per_seed))
        t = r["table"][kind]
        out.append(f"| {kind} | {seeds} | {cell(t['val_loss'])} | {t['active_mlp_params']:,} | {t['params']:,} |")
    out += ["", "| paired difference | mean ± std | min | max |", "| --- | --- | --- | --- |"]
    for pair, d in r["paired_val_loss"].items():
        out.append(f"| {pair} | {cell(d)} | {d['min']:+.3f} | {d['max']:+.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    for path in argv if argv is not None else sys.argv[1:]:
        r = json.loads(Path(path).read_text())
        print(f"<!-- {path} -->")
        if r["benchmark"] == "moex_othello":
            print(criteria_table(r) + "\n\n" if "criteria" in r else "", end="")
            print(othello_tables(r))
        else:
            print(text_table(r))
        print()


if __name__ == "__main__":
    main()
