"""A self-contained feature page for an image unit: pixel-space facets beside PPGN samples.

Written by ``featureforge facets-vision --method both`` next to ``facets.json``; images are inlined
as data URLs so the page opens from ``file://`` with nothing else. Each number carries its exact
value in ``data-value`` (as the text dashboard's pages do) so tests can compare it with the JSON.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any


def _img(path: str, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _num(name: str, value: Any) -> str:
    return f'<tr><th>{html.escape(name)}</th><td data-value="{html.escape(str(value))}">{html.escape(str(value))}</td></tr>'


def write_feature_page(folder: Path, summary: dict[str, Any]) -> Path:
    """``folder/feature.html`` from a ``facets-vision --method both`` summary."""
    unit = summary["unit"]
    what = f"latent {unit['index']} of {unit['dictionary']} over {unit['layer']}" if unit.get("dictionary") else f"unit {unit['index']} of {unit['layer']}"
    p = summary["ppgn"]
    pixel_rows = "".join(_num(n, v) for n, v in (
        ("facets", summary["facets"]), ("facet sizes", summary["sizes"]), ("synthetic activations", summary["synthetic_activations"]),
        ("best real activation", summary["best_real_activation"])))
    ppgn_rows = "".join(_num(n, v) for n, v in (
        ("chains", p["chains"]), ("kept steps", p["kept_steps"]), ("mean activation / best real", p["mean_activation_fraction"]),
        ("real facets reached", p["real_facets_reached"]), ("mean pairwise pixel RMS", p["mean_pairwise_pixel_rms"])))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(what)}</title>
<style>body{{font:14px sans-serif;margin:1.5em}} .cols{{display:flex;gap:2em;flex-wrap:wrap}} img{{image-rendering:pixelated;max-width:100%}}
th{{text-align:left;padding-right:1em}}</style></head><body>
<h1>{html.escape(what)}</h1>
<div class="cols">
<section id="pixel"><h2>Pixel-space facets (Nguyen, Yosinski &amp; Clune 2016)</h2>
<p>One row per facet: the synthetic image (red frame), then the facet's top real images.</p>
{_img(summary["grid"], "pixel-space facets")}<table>{pixel_rows}</table></section>
<section id="ppgn"><h2>PPGN samples (Nguyen et al. 2016, arXiv 1612.00005)</h2>
<p>One row per chain, samples every {p["kept_steps"][0]} steps left to right; a blue frame marks a sample in none of the real facets.</p>
{_img(p["grid"], "PPGN chains")}<table>{ppgn_rows}</table></section>
</div></body></html>
"""
    path = folder / "feature.html"
    path.write_text(page)
    return path
