"""Functional impact of a set of units: the CE-loss change when they are ablated, against random sets.

The test of Gurnee et al. 2024 and Nandan et al. ("Universal Neurons in GPT-2: Emergence,
Persistence, and Functional Impact"): ablate the universal units of a model and compare the rise
in next-token cross-entropy with that of random sets of the same size whose units fire about as
often (frequency-matched: each universal unit is paired with a non-universal unit of the nearest
firing frequency). Ablation is through the one intervention model (``featureforge.interventions``)
at the store's live model (``source.splice``): ``mean`` clamps each unit's code to its mean over
store rows (so only the unit's variation is removed), ``zero`` sets it to 0.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError

__all__ = ["ablation_impact", "frequency_matched"]


def frequency_matched(units: Sequence[int], frequency: np.ndarray, rng: np.random.Generator, pool: int = 5) -> list[int]:
    """For each unit, a distinct other unit (not in ``units``) among the ``pool`` of nearest firing frequency."""
    chosen = set(int(u) for u in units)
    taken: set[int] = set()
    out = []
    candidates = np.array([i for i in range(len(frequency)) if i not in chosen])
    if len(candidates) < len(chosen):
        raise BadInputError(f"{len(chosen)} units leave only {len(candidates)} others to draw a matched random set from; ablate fewer units")
    for u in units:
        free = np.array([c for c in candidates if c not in taken])
        near = free[np.argsort(np.abs(frequency[free] - frequency[u]), kind="stable")[:pool]]
        pick = int(rng.choice(near))
        taken.add(pick)
        out.append(pick)
    return out


def ablation_impact(
    run: str | os.PathLike,
    units: Sequence[int],
    *,
    store: Any,
    frequency: Sequence[float] | None = None,
    random_sets: int = 3,
    max_sequences: int = 64,
    mode: str = "mean",
    seed: int = 0,
) -> dict[str, Any]:
    """CE per token of the store's model: clean, with ``units`` of ``run`` ablated, and with each of
    ``random_sets`` frequency-matched random sets ablated, on held-out documents of the store's data.

    ``frequency`` is each unit's firing frequency (``compare``'s ``runs/K.json``); computed over the
    store's first rows when not given.
    """
    import torch

    from ..dictionary import load
    from ..evaluation._context import rebuild_source
    from ..interventions import Intervention, replacement
    from ..store import ActivationStore, open_store

    if mode not in ("mean", "zero"):
        raise BadInputError(f"ablation mode {mode!r} is not mean or zero")
    units = [int(u) for u in units]  # none: every edit is the identity, so each ΔCE is exactly 0 (a check of the splice)
    twice = sorted({u for u in units if units.count(u) > 1})
    if twice:
        raise BadInputError(f"unit {twice[0]} is named twice; pass each unit once")
    opened = store if isinstance(store, ActivationStore) else open_store(store)
    dictionary = load(run)
    if int(dictionary.d_in) != opened.d_in:
        raise BadInputError(f"run {run} reads rows of width {dictionary.d_in} but store {opened.url} has width {opened.d_in}; pass the store of its site")
    m = int(dictionary.d_dict)
    bad = [u for u in units if not 0 <= u < m]
    if bad:
        raise BadInputError(f"unit {bad[0]} is out of range for run {run} ({m} units); pass units in 0..{m - 1}")
    if frequency is not None and len(frequency) != m:
        raise BadInputError(f"{len(frequency)} firing frequencies for run {run}'s {m} units; pass the frequencies of this run's units")
    source = rebuild_source(opened)
    if not source.can_splice:
        raise BadInputError(f"store {opened.url}'s source {source.name!r} cannot run its model; ablation needs a source with a live model (hf)")
    rows = torch.from_numpy(opened.read(0, min(opened.rows, 8192)))
    with torch.no_grad():
        codes = dictionary.encode(rows).float()
    mean = codes.mean(dim=0)
    freq = np.asarray(frequency, dtype=np.float64) if frequency is not None else (codes > 0).float().mean(dim=0).numpy()
    rng = np.random.default_rng(seed)
    sets = {"ablated": units, **{f"random{k}": frequency_matched(units, freq, rng) for k in range(random_sets)}}

    def edit(chosen: list[int]) -> Any:
        if mode == "zero" and chosen:
            return replacement(dictionary, [Intervention(tuple(chosen), "ablate")])
        return replacement(dictionary, [Intervention((u,), "clamp", float(mean[u]), "absolute") for u in chosen])

    start_doc = 0
    if "doc_ids" in opened.columns:
        start_doc = int(opened.read(0, opened.rows, "doc_ids").max()) + 1  # documents the store never saw
    totals: dict[str, float] = {}
    with source.splice(dictionary) as live:
        fns = {name: edit(chosen) for name, chosen in sets.items()}
        for batch in live.batches(start_doc=start_doc, max_sequences=max_sequences):
            for key, value in live.compare(batch, fns).items():
                totals[key] = totals.get(key, 0.0) + value
    if "tokens" not in totals:
        raise BadInputError(f"store {opened.url}'s model is not a causal language model; the CE impact needs next-token predictions")
    n = max(totals["tokens"], 1.0)
    clean = totals["ce_clean"] / n
    delta = {name: totals[f"ce_{name}"] / n - clean for name in sets}
    randoms = [delta[f"random{k}"] for k in range(random_sets)]
    return {
        "units": len(units),
        "mode": mode,
        "tokens": int(totals["tokens"]),
        "start_doc": start_doc,
        "ce_clean": round(clean, 5),
        "delta_ce_ablated": round(delta["ablated"], 5),
        "delta_ce_random": [round(d, 5) for d in randoms],
        "delta_ce_random_mean": round(float(np.mean(randoms)), 5) if randoms else None,
        "random_sets": {k: v for k, v in sets.items() if k != "ablated"},
    }
