"""Markdown tables of the MoE-X testbed results (moex_othello / moex_text JSON) for docs/methods/moex.md.

Written from the result files so the docs carry the measured numbers, not hand copies:

    python benchmarks/moex_tables.py benchmarks/results_moex_othello.json benchmarks/results_moex_text.json
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
    out += ["", "Paired differences (same seed = same initialisation seed and data order), mean ± std over seeds:", "",
            "| difference | coverage | reconstruction | val loss | same sign on every seed (cov / rec) |", "| --- | --- | --- | --- | --- |"]
    for pair, stats in r["verdict_inputs"].items():
        if stats["coverage"] is None:
            continue
        signs = " / ".join("yes" if stats[m] and stats[m]["same_sign_all_seeds"] else "no" for m in ("coverage", "reconstruction"))
        out.append(f"| {pair} | {cell(stats['coverage'])} | {cell(stats['reconstruction'])} | {cell(stats['val_loss'])} | {signs} |")
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
        print(othello_tables(r) if r["benchmark"] == "moex_othello" else text_table(r))
        print()


if __name__ == "__main__":
    main()
