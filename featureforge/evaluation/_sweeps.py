"""A sweep you can read: ``featureforge evaluate SWEEP_FOLDER`` evaluates every member run and
writes one summary into the sweep folder.

A sweep folder is what ``featureforge train --out F -o k=16,32`` writes: one run folder per swept
value (``F/k=16``, ``F/k=32``), each with its own ``config.json``. Each member gets its own
``report.json`` (as ``evaluate`` writes it); the summary is ``F/sweep.json`` (one row per member:
its swept options, L0, FVU, the downstream score and, on synthetic stores, MMCS) and ``F/sweep.png``
(L0 against FVU, and against the downstream score when there is one; the Pareto front, members no
other member beats on both axes, joined by a line).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..run import REPORT_FILE

__all__ = ["SWEEP_FILE", "SWEEP_PLOT", "evaluate_sweep", "is_sweep", "pareto_front", "summary_lines", "sweep_members"]

SWEEP_FORMAT_VERSION = 1
SWEEP_FILE = "sweep.json"
SWEEP_PLOT = "sweep.png"


def sweep_members(folder: str | os.PathLike) -> list[Path]:
    """The member run folders of a sweep folder (sub-folders with a ``config.json``), by name."""
    from ..run import CONFIG_FILE

    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / CONFIG_FILE).exists())


def is_sweep(folder: str | os.PathLike) -> bool:
    """A folder that is not itself a run but holds member runs."""
    from ..run import CONFIG_FILE

    return not (Path(folder) / CONFIG_FILE).exists() and bool(sweep_members(folder))


def pareto_front(points: Sequence[tuple[float, float]], maximise_y: bool = False) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, and lower y, or higher
    y with ``maximise_y``), in increasing x. Points with a missing coordinate are left out."""
    sign = -1.0 if maximise_y else 1.0
    kept = [(x, sign * y, i) for i, (x, y) in enumerate(points) if x is not None and y is not None]
    front, best = [], float("inf")
    for x, y, i in sorted(kept):
        if y < best:
            front.append(i)
            best = y
    return front


def _member_row(member: Path, report: Mapping[str, Any]) -> dict[str, Any]:
    from ..run import RunConfig

    config = RunConfig.read(member)
    metrics = {name: result.get("metrics", {}) for name, result in report.get("evaluators", {}).items()}
    rec, down, truth = metrics.get("reconstruction", {}), metrics.get("downstream", {}), metrics.get("ground-truth", {})
    return {
        "member": member.name,
        "label": config.sweep_label or member.name,
        "options": config.options,
        "l0": rec.get("l0"),
        "fvu": rec.get("fvu"),
        "dead_fraction": rec.get("dead_fraction"),
        "score": down.get("score"),
        "mmcs": truth.get("mmcs"),
        "report": str(Path(member.name) / REPORT_FILE),
    }


def evaluate_sweep(
    folder: str | os.PathLike,
    evaluate_member: Callable[[Path], Mapping[str, Any]],
    store_url: str,
) -> dict[str, Any]:
    """Evaluate each member with ``evaluate_member(member_folder) -> report``; write and return the summary."""
    from ..files import write_json

    root = Path(folder)
    members = sweep_members(root)
    rows = [_member_row(member, evaluate_member(member)) for member in members]
    # Every value comes from a member's JSON report or config: the summary is JSON as it stands.
    summary = {
        "format_version": SWEEP_FORMAT_VERSION,
        "sweep": str(root),
        "store": store_url,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "members": rows,
        "pareto_fvu": [rows[i]["member"] for i in pareto_front([(r["l0"], r["fvu"]) for r in rows])],
        "pareto_score": [rows[i]["member"] for i in pareto_front([(r["l0"], r["score"]) for r in rows], maximise_y=True)],
        "plot": SWEEP_PLOT,
    }
    _plot(summary, root / SWEEP_PLOT)
    write_json(root / SWEEP_FILE, summary)
    return summary


def _plot(summary: Mapping[str, Any], path: Path) -> None:
    from ..plots import new_figure, save_figure

    rows = summary["members"]
    panels = [("fvu", "FVU (lower is better)", False)]
    if any(r["score"] is not None for r in rows):
        panels.append(("score", "downstream score (higher is better)", True))
    fig = new_figure(5.2 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label, maximise) in zip(axes, panels):
        points = [(r["l0"], r[key]) for r in rows]
        shown = [(x, y, r["label"]) for (x, y), r in zip(points, rows) if x is not None and y is not None]
        ax.scatter([x for x, _, _ in shown], [y for _, y, _ in shown], color="#4c72b0", zorder=2)
        for x, y, name in shown:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(points, maximise_y=maximise)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#c44e52", linewidth=1, label="Pareto front")
        ax.set_xlabel("L0 (active latents per row)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"sweep {Path(summary['sweep']).name}: {len(rows)} members", fontsize=9)
    save_figure(fig, path)


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The sweep's table as text, one line per member (Pareto members on FVU marked *)."""
    on_front = set(summary.get("pareto_fvu", []))
    lines = [f"sweep {summary['sweep']} on {summary['store']}: {len(summary['members'])} members", f"  {'member':<24} {'L0':>8} {'FVU':>8} {'score':>8}"]
    for r in summary["members"]:
        cells = ["n/a" if r[k] is None else f"{r[k]:.4g}" for k in ("l0", "fvu", "score")]
        mark = "*" if r["member"] in on_front else " "
        lines.append(f"{mark} {r['member']:<24} {cells[0]:>8} {cells[1]:>8} {cells[2]:>8}")
    return lines
