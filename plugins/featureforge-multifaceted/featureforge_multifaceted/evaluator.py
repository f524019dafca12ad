"""The ``facets`` evaluator: one pass over the store, facets of every live latent, optionally a dashboard.

Metrics go into ``report.json``; the per-latent table (counts, density, max activation, number of
facets and their sizes) goes into the ``facets.json`` artifact; with ``-o site=DIR`` the HTML
dashboard is written there (``featureforge dashboard`` sets it).

A run of several sites (config.json ``sites``) is shown on the rows it encodes: a transcoder's
source site (e.g. an MLP's input), a crosscoder's sites side by side (``store.for_roles``); its
pages say where each latent reads and writes (``sites_page``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

import featureforge
from featureforge import BadInputError, EvaluationContext, EvaluationResult, Evaluator, OptionError

from .facets import FacetSettings

#: Provenance facts that must agree between a run's training store and the store it is shown on.
PROVENANCE_KEYS = ("model", "hook", "site", "generator", "n_features")


@dataclasses.dataclass
class FacetsOptions:
    top_n: int = 64
    """Top-activating rows kept per latent: the examples its facets are found from."""
    sample: int = 64
    """Firing rows sampled uniformly per latent, for the activation-quantile bands."""
    max_facets: int = 4
    """Largest number of facets tried per latent (chosen by silhouette)."""
    min_silhouette: float = 0.2
    """A latent whose best silhouette is below this keeps one facet."""
    null_margin: float = 0.05
    """More than one facet only if the best silhouette beats a same-covariance Gaussian's by this much; negative: no null check."""
    pca_dims: int = 16
    """PCA components of the example embeddings before k-means."""
    neighbours: int = 15
    """Nearest examples added to a facet's prototype (the paper's 15)."""
    features: int = 0
    """Latents analysed in detail, spread over the firing-count range; 0: every live latent."""
    latents: str = ""
    """Comma-separated latent indices to analyse (e.g. 3,17,42); overrides features."""
    embed: str = "acts"
    """What facets cluster: acts (the stored activation vectors), layer:N (live model's hidden state N at the token) or pooled (its mean last hidden state over the context)."""
    contexts: Literal["auto", "on", "off"] = "auto"
    """Token contexts of examples: auto (when the store has token_ids), on (refuse stores without), off."""
    layout: Literal["pca", "tsne", "none"] = "pca"
    """2-D map of each feature's top examples on its page: PCA (fast), t-SNE (as in the paper; about 1 s per feature) or none."""
    shown: int = 12
    """Top examples shown per feature."""
    bands: int = 5
    """Activation-quantile bands per feature."""
    rows: int = 0
    """Rows streamed from the store; 0: every committed row."""
    batch_rows: int = 0
    """Rows encoded at once; 0: about 16M codes per batch."""
    site: str = ""
    """Folder to write the HTML dashboard into; empty: no dashboard."""
    seed: int = 0
    """Seed of the uniform sample and of k-means."""
    steer_tokens: int = 0
    """Dashboard of a causal LM: tokens of the precomputed steered continuations on each feature page (latent added at 2, 4, 8 × its typical value); 0: no steering section."""
    steer_prompt: str = "The"
    """Prompt the steered continuations start from."""
    compare: str = ""
    """Folder written by featureforge compare that includes this run: each feature page lists its best matches in the other compared runs."""


class FacetsEvaluator(Evaluator):
    name = "facets"
    description = "Multifaceted feature visualization: facets of each latent's top examples (PCA + k-means), optional HTML dashboard"
    Options = FacetsOptions

    def __post_init__(self) -> None:
        o = self.options
        for field in ("top_n", "max_facets", "pca_dims", "shown", "bands"):
            if getattr(o, field) < 1:
                raise OptionError(f"facets: {field}={getattr(o, field)} must be at least 1")
        from .live_embed import parse_embed

        if parse_embed(o.embed)[0] != "acts" and o.contexts == "off":
            raise OptionError(f"facets: embed={o.embed} runs the model on text contexts; drop -o contexts=off")
        for field in ("sample", "neighbours", "features", "rows", "batch_rows", "steer_tokens"):
            if getattr(o, field) < 0:
                raise OptionError(f"facets: {field}={getattr(o, field)} must not be negative")

    def settings(self) -> FacetSettings:
        o = self.options
        return FacetSettings(max_facets=o.max_facets, min_silhouette=o.min_silhouette, pca_dims=o.pca_dims, neighbours=o.neighbours, seed=o.seed,
                             null_margin=o.null_margin if o.null_margin >= 0 else None)

    def evaluate(self, dictionary: Any, context: EvaluationContext) -> EvaluationResult:
        from .analysis import RecordSettings, choose_latents, feature_records
        from .collect import collect
        from .contexts import require_tokens, token_decoder
        from .effects import token_effects, unembedding
        from .live_embed import live_embedder
        from .sites_page import output_rows, site_sections

        o = self.options
        store = context.store
        if store is None:
            raise BadInputError("the facets evaluator needs an activation store; pass --store")
        roles = context.roles or dict((getattr(dictionary, "config", None) or {}).get("sites") or {})
        store = store.for_roles(roles)
        check_match(dictionary, store, dict(context.run_config))
        text = o.contexts == "on" or (o.contexts == "auto" and "token_ids" in store.columns)
        if text or o.embed != "acts":
            require_tokens(store)
            text = True
        requested = parse_latents(o.latents, int(dictionary.d_dict)) if o.latents else None
        source = _store_source(context) if text else context.given_source
        embed = live_embedder(source, o.embed)
        dictionary.eval()
        with featureforge.progress_bar(store.rows if not o.rows else min(o.rows, store.rows), "facets: collect",
                                       enabled=None if context.progress else False) as bar:
            found = collect(dictionary, store, top_n=o.top_n, sample=o.sample, batch_rows=o.batch_rows, max_rows=o.rows or None,
                            seed=o.seed, progress=bar.update)
        latents = requested if requested is not None else choose_latents(found, o.features)
        decode = token_decoder(source if text else None)
        rows_out, written = output_rows(dictionary, roles)
        w_u, effects_note = unembedding(source, int(rows_out.shape[-1])) if text else (None, "no token ids in the store")
        if w_u is not None and written:
            effects_note += f", decoder rows in site {written}"
        effects = token_effects(rows_out, w_u, latents, decode) if w_u is not None else None
        sites = site_sections(dictionary, roles, latents)
        shown = RecordSettings(shown=o.shown, bands=o.bands, text=text, layout="" if o.layout == "none" else o.layout)
        site = None
        if o.site:
            from .dashboard import SiteWriter

            site = SiteWriter(Path(o.site))
        from .steering_page import steering_sections

        steering = steering_sections(source, dictionary, store, latents, prompt=o.steer_prompt, max_new_tokens=o.steer_tokens) if site and o.steer_tokens else {}
        matches = _best_matches(o.compare, context.run_dir) if site and o.compare else {}
        t0 = time.perf_counter()
        table: dict[int, dict[str, Any]] = {}
        for rec in feature_records(dictionary, store, found, latents, self.settings(), shown, decode, effects, embed=embed):
            table[rec["id"]] = {k: rec[k] for k in ("count", "density", "max_act", "mean_act")} | {
                "facets": rec["facets"]["k"], "sizes": [f["size"] for f in rec["facets"]["items"]]}
            if site is not None:
                if rec["id"] in steering:
                    rec["steering"] = steering[rec["id"]]
                if rec["id"] in sites:
                    rec["sites"] = sites[rec["id"]]
                if o.compare:
                    rec["matches"] = matches.get(rec["id"], [])
                site.feature(rec)
        seconds = time.perf_counter() - t0
        counts = [t["facets"] for t in table.values()]
        metrics = {
            "rows": found.rows,
            "collect_seconds": round(found.seconds, 3),
            "rows_per_second": round(found.rows_per_second, 1),
            "facet_seconds": round(seconds, 3),
            "d_dict": found.d_dict,
            "live": int((found.counts > 0).sum()),
            "dead": int((found.counts == 0).sum()),
            "analysed": len(table),
            "mean_facets": round(sum(counts) / len(counts), 4) if counts else None,
            "multi_facet_fraction": round(sum(c > 1 for c in counts) / len(counts), 4) if counts else None,
            "facet_counts": {str(k): counts.count(k) for k in range(1, o.max_facets + 1)},
            "contexts": text,
            "embed": o.embed,
            "output_effects": effects is not None,
            "output_effects_note": effects_note,
        }
        if roles.get("target") or roles.get("sites"):  # where the latents are read and written
            metrics["reads"] = list(roles["sites"]) if roles.get("sites") else [roles["acts"]]
            metrics["writes"] = list(roles["sites"]) if roles.get("sites") else [roles["target"]]
        context.out_dir.mkdir(parents=True, exist_ok=True)
        table_path = context.out_dir / "facets.json"
        table_path.write_text(json.dumps({"rows": found.rows, "features": {str(k): v for k, v in table.items()}}))
        artifacts = {"facets": str(table_path)}
        if site is not None:
            artifacts["dashboard"] = str(site.finish(metrics, table, _title(context, store)))
        return EvaluationResult(metrics, artifacts)


def parse_latents(text: str, d_dict: int) -> list[int]:
    """Latent indices from ``3,17,42``; each must be in 0..d_dict-1."""
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise OptionError(f"facets: latents={text!r} is not a comma list of integers; write e.g. -o latents=3,17,42") from None
    bad = [i for i in chosen if not 0 <= i < d_dict]
    if bad:
        raise BadInputError(f"latent index {bad[0]} is out of range: the dictionary has {d_dict} latents; pick 0..{d_dict - 1}")
    return chosen


def _title(context: EvaluationContext, store: Any) -> str:
    run = context.run_dir.name if context.run_dir is not None else "dictionary"
    return f"{run} on {Path(store.url).name}"


def _store_source(context: EvaluationContext) -> Any:
    """The store's source (for decoding), or None where the core cannot rebuild it here."""
    try:
        return context.source
    except featureforge.BadInputError:  # not installed here, or options from another version
        return None


def check_match(dictionary: Any, store: Any, run_config: dict[str, Any]) -> None:
    """Refuse a store whose width or provenance differs from the run's training store (``store``: the
    view of the rows the dictionary encodes; a crosscoder's sites side by side are as wide as all of them)."""
    want = int(dictionary.d_in) * len(getattr(store, "stacked_sites", None) or [None])
    if want != store.d_in:
        raise BadInputError(f"the dictionary reads rows of width {want} but store {store.url} has d_in={store.d_in}; "
                            "use a store cached at the hook point the run was trained on")
    trained = run_config.get("store") if isinstance(run_config.get("store"), dict) else {}
    old, new = trained.get("provenance") or {}, store.provenance
    diffs = [f"{k}={old[k]!r} (store has {new[k]!r})" for k in PROVENANCE_KEYS if k in old and k in new and old[k] != new[k]]
    if (trained.get("source") or {}).get("name") == "synthetic" == store.source.get("name"):
        if old.get("seed") != new.get("seed"):
            diffs.append(f"seed={old.get('seed')!r} (store has {new.get('seed')!r})")
    if diffs:
        raise BadInputError(f"the run was trained on other activations than store {store.url} holds: {'; '.join(diffs)}; "
                            "pass the store the run was trained on (or one cached from the same model and hook)")


def _best_matches(folder: str, run_dir: Any) -> dict[int, list[dict[str, Any]]]:
    """Each latent's best partners in a ``featureforge compare`` folder; refuses one that left this run out."""
    from featureforge.comparison import COMPARE_FILE, best_matches

    if not (Path(folder) / COMPARE_FILE).exists():
        raise BadInputError(f"facets: compare={folder} holds no {COMPARE_FILE}; run featureforge compare RUN OTHER --out {folder} first")
    found = best_matches(folder, run_dir) if run_dir is not None else {}
    if not found:
        raise BadInputError(f"facets: the comparison in {folder} does not include run {run_dir}; compare this run with the others first")
    return found
