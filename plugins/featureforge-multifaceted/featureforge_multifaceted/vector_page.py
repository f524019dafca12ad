"""A dashboard page for a steering vector: its decomposition in a dictionary's latents, with their contexts.

``featureforge vector-page VECTOR RUN --store S --out DIR`` writes ``DIR/vector_<name>.html``, one
self-contained static page: the vector's provenance and typical projection, the core's
decomposition (``featureforge.decompose``: the non-negative sparse fit and the cosine ranking),
and for each fitted latent its top activating contexts, each token shaded by the latent's
activation (``contexts.contexts``, the dashboard's own context reader). Latent ids link to
``feature.html?id=N``, so the page sits beside a ``featureforge dashboard`` site in the same folder.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from .contexts import contexts, token_decoder
from .dashboard import assets

PAGE_JS = "\"use strict\";"


def _shade(tokens: list[str], acts: list[float], index: int) -> str:
    top = max([a for a in acts if a > 0] or [1.0])
    spans = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        alpha = max(0.0, min(1.0, a / top)) * 0.8
        hit = " hit" if i == index else ""
        spans.append(f'<span class="tok{hit}" style="background:rgba(221,132,82,{alpha:.2f})" title="{a:.3g}">{html.escape(tok)}</span>')
    return "".join(spans)


def vector_page(vector: str, run: str, store: Any, out: str, *, k: int = 8, top: int = 10, n_contexts: int = 5) -> Path:
    """Write the page; returns its path."""
    import featureforge
    from featureforge.vectors import load_vector

    opened = store if isinstance(store, featureforge.ActivationStore) else featureforge.open_store(store)
    v = load_vector(vector)
    result = featureforge.decompose(v, run, store=opened, k=k, top=top, contexts=n_contexts)
    dictionary = featureforge.load(run)
    decode = token_decoder(featureforge.rebuild_source(opened) if "token_ids" in opened.columns else None)
    requests = [(f["latent"], c["row"]) for f in result.fit for c in f.get("contexts", [])]
    shown = contexts(dictionary, opened, requests, decode) if requests and "token_ids" in opened.columns else []
    by_latent: dict[int, list[dict[str, Any]]] = {}
    for ctx in shown:
        by_latent.setdefault(int(ctx["latent"]), []).append(ctx)
    stats = v.stats
    rows = "".join(
        f"<tr><td><a href=\"feature.html?id={f['latent']}\">#{f['latent']}</a></td><td class=num data-key=weight data-value=\"{f['weight']:.6g}\">{f['weight']:.3f}</td>"
        f"<td class=num>{f['cosine']:.3f}</td><td class=num>{'silent' if f['typical_units'] is None else format(f['typical_units'], '.3g')}</td>"
        f"<td>{''.join('<div class=ctx>' + _shade(c['tokens'], c['activations'], c['index']) + '</div>' for c in by_latent.get(f['latent'], []))}</td></tr>"
        for f in result.fit)
    ranking = "".join(f"<tr><td><a href=\"feature.html?id={c['latent']}\">#{c['latent']}</a></td><td class=num>{c['cosine']:.3f}</td></tr>"
                      for c in result.cosine)
    body = (f"<h1>Steering vector {html.escape(v.name)}</h1>"
            f"<p class=note>{html.escape(v.method)} difference of {stats.get('positive_prompts', '?')} positive and "
            f"{stats.get('negative_prompts', '?')} negative prompts at <b>{html.escape(v.hook)}</b>; typical projection "
            f"{v.typical:.4g}; model {html.escape(str(v.provenance.get('model', v.source.get('options', {}).get('model', ''))))}</p>"
            f"<h2>Non-negative sparse fit in the latents of {html.escape(str(run))}</h2>"
            f"<p id=explained data-value=\"{result.explained:.6g}\">{len(result.fit)} latents explain {result.explained:.3f} of |v|² "
            f"(cos {result.fit_cosine:.3f}); weight on the unit decoder row, and the vector's α = 1 push in × each latent's typical value</p>"
            f"<table><tr><th>latent</th><th class=num>weight</th><th class=num>cos</th><th class=num>× typical</th><th>top contexts</th></tr>{rows}</table>"
            f"<h2>Latents by cosine with the vector</h2><table><tr><th>latent</th><th class=num>cos</th></tr>{ranking}</table>")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vector_{v.name or 'vector'}.html"
    path.write_text(assets.page(f"Steering vector {v.name}", body, PAGE_JS), encoding="utf-8")
    return path
