"""Per-feature records: the numbers, examples and facets a report and a dashboard page show.

``feature_records`` works through the chosen latents in blocks, so only one block's examples,
embeddings and contexts are in memory at a time, and yields one JSON-ready dict per latent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .collect import Collected
from .contexts import contexts
from .facets import FacetSettings, Facets, find_facets, layout, token_stats
from .gather import read_rows

#: Example rows (top rows of the latents in one block) whose embeddings are held at once.
BLOCK_ROWS = 131072


@dataclasses.dataclass
class RecordSettings:
    shown: int = 12
    bands: int = 5
    per_band: int = 3
    before: int = 8
    after: int = 4
    text: bool = False
    #: 2-D map of each feature's top examples: "pca", "tsne" or "" (none).
    layout: str = "pca"


def choose_latents(found: Collected, limit: int) -> list[int]:
    """Every live latent, or ``limit`` of them spread evenly over the range of firing counts."""
    live = torch.nonzero(found.counts > 0).flatten()
    if limit <= 0 or limit >= live.numel():
        return [int(i) for i in live]
    order = live[torch.argsort(found.counts[live], stable=True)]
    picks = np.unique(np.linspace(0, order.numel() - 1, limit).round().astype(int))
    return sorted(int(order[i]) for i in picks)


def histogram(found: Collected, latent: int) -> dict[str, Any]:
    counts = found.histogram[latent].numpy()
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return {"log10_edges": [], "counts": []}
    edges = found.histogram_edges()
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    return {"log10_edges": [round(float(e), 4) for e in edges[lo : hi + 1]], "counts": counts[lo:hi].tolist()}


def bands(values: np.ndarray, rows: np.ndarray, n_bands: int, per_band: int) -> list[dict[str, Any]]:
    """Equal-count activation bands of a latent's uniform sample, with a few examples spread over each."""
    out = []
    if values.size == 0:
        return out
    for part in np.array_split(np.arange(values.size), min(n_bands, values.size)):
        pick = part[np.unique(np.linspace(0, part.size - 1, min(per_band, part.size)).round().astype(int))]
        out.append({"lo": round(float(values[part[0]]), 4), "hi": round(float(values[part[-1]]), 4), "share": round(part.size / values.size, 4),
                    "examples": [{"row": int(rows[i]), "value": round(float(values[i]), 4)} for i in pick]})
    return out


def feature_records(dictionary: Any, store: Any, found: Collected, latents: Sequence[int], settings: FacetSettings,
                    shown: RecordSettings, decode: Callable[[list[int]], list[str]],
                    effects: dict[int, Any] | None = None, keep_facets: dict[int, Facets] | None = None,
                    embed: Callable[[list[dict[str, Any]]], np.ndarray] | None = None) -> Iterator[dict[str, Any]]:
    """One record per latent in ``latents`` (see the module docstring); facets also go to ``keep_facets``.

    Facets cluster the examples' activation vectors, or ``embed(contexts)`` of their text contexts.
    """
    per_block = max(1, BLOCK_ROWS // max(1, found.top_rows.shape[1]))
    for start in range(0, len(latents), per_block):
        block = list(latents[start : start + per_block])
        tops = {lat: found.top(lat) for lat in block}
        samples = {lat: found.sampled(lat) for lat in block}
        all_rows = np.concatenate([tops[lat][1] for lat in block]) if block else np.zeros(0, np.int64)
        band_of = {lat: bands(*samples[lat], shown.bands, shown.per_band) for lat in block}
        ctx: dict[tuple[int, int], dict[str, Any]] = {}
        if shown.text:
            wanted = {(lat, int(r)) for lat in block for r in tops[lat][1]}
            wanted |= {(lat, e["row"]) for lat in block for b in band_of[lat] for e in b["examples"]}
            for c in contexts(dictionary, store, sorted(wanted, key=lambda p: p[1]), decode, shown.before, shown.after):
                ctx[(c["latent"], c["row"])] = {"tokens": c["tokens"], "acts": c["activations"], "index": c["index"], "token_ids": c["token_ids"]}
        if embed is None:
            vectors = read_rows(store, all_rows)["acts"]
        else:
            vectors = embed([ctx[(lat, int(r))] for lat in block for r in tops[lat][1]])
        facets, at = {}, 0
        for lat in block:
            n = tops[lat][1].size
            facets[lat] = find_facets(vectors[at : at + n], settings)
            at += n
        if keep_facets is not None:
            keep_facets.update(facets)
        for c in ctx.values():
            c.pop("token_ids")
        for lat in block:
            yield _record(lat, found, tops[lat], facets[lat], band_of[lat], ctx, shown, effects)


def _map(facets: Facets, method: str) -> dict[str, Any] | None:
    """The top examples' 2-D coordinates (same order as the top rows) and facet of each."""
    if not method or len(facets.labels) == 0:
        return None
    xy = layout(facets, method)
    return {"method": method, "xy": [[round(float(a), 4), round(float(b), 4)] for a, b in xy], "facet": facets.labels.tolist()}


def _example(lat: int, row: int, value: float, ctx: dict) -> dict[str, Any]:
    ex = {"row": int(row), "value": round(float(value), 4)}
    ex.update(ctx.get((lat, int(row)), {}))
    return ex


def _record(lat: int, found: Collected, top: tuple[np.ndarray, np.ndarray], facets: Facets, band_list: list[dict[str, Any]],
            ctx: dict, shown: RecordSettings, effects: dict[int, Any] | None) -> dict[str, Any]:
    values, rows = top
    count = int(found.counts[lat])
    for b in band_list:
        b["examples"] = [_example(lat, e["row"], e["value"], ctx) for e in b["examples"]]
    active_tokens = [ctx[(lat, int(r))]["tokens"][ctx[(lat, int(r))]["index"]] for r in rows] if shown.text else None
    stats = token_stats(facets.labels, active_tokens) if active_tokens is not None else [None] * facets.k
    items = []
    for c in range(facets.k):
        members = np.flatnonzero(facets.labels == c)
        items.append({
            "size": int(members.size),
            "share": round(members.size / max(rows.size, 1), 4),
            "mean_act": round(float(values[members].mean()), 4),
            "max_act": round(float(values[members].max()), 4),
            "prototype": [_example(lat, rows[i], values[i], ctx) for i in facets.prototypes[c]],
            "tokens": stats[c],
        })
    return {
        "id": int(lat),
        "count": count,
        "density": found.counts[lat].item() / max(found.rows, 1),
        "max_act": round(float(values[0]), 4) if values.size else 0.0,
        "mean_act": round(float(found.sums[lat]) / max(count, 1), 4),
        "histogram": histogram(found, lat),
        "top": [_example(lat, r, v, ctx) for v, r in zip(values[: shown.shown], rows[: shown.shown])],
        "bands": band_list,
        "facets": {"k": facets.k, "silhouettes": {str(k): round(v, 4) for k, v in facets.silhouettes.items()},
                   "null_silhouette": None if facets.null_silhouette is None else round(facets.null_silhouette, 4), "items": items},
        "map": _map(facets, shown.layout),
        "effects": (effects or {}).get(int(lat)),
    }
