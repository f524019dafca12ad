"""Commands: ``featureforge dashboard`` (the ``facets`` evaluator with its site written to ``--out``),
``featureforge vector-page`` (a steering vector's decomposition page) and ``featureforge facets-vision``
(facet synthesis for a unit of an image model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def dashboard(run: str, store: str, out: str, options: tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
    """Evaluate ``run`` on ``store`` with the facets evaluator; ``out`` gets report.json and the site."""
    import featureforge

    for pair in options:
        if "=" not in pair or pair.split("=", 1)[0].strip() == "site":
            raise featureforge.OptionError(f"-o {pair!r} is not KEY=VALUE of the facets evaluator (site is --out); see `featureforge plugins`")
    settings = [*options, f"site={Path(out).absolute()}"]
    return featureforge.evaluate(run, store=store, evaluators={"facets": settings}, out_dir=out)


def add_commands(cli: Any) -> None:
    @cli.command(name="dashboard")
    @click.argument("run")
    @click.option("--store", required=True, help="Store path or fsspec URL the run's latents are shown on.")
    @click.option("--out", required=True, help="Folder for the site (index.html, feature.html, data/) and report.json.")
    @click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                  help="An option of the facets evaluator, e.g. -o top_n=128 -o features=500; repeatable.")
    def dashboard_command(run: str, store: str, out: str, options: tuple[str, ...]) -> None:
        """Self-contained HTML feature dashboard with facets (open OUT/index.html, works from file://)."""
        report = dashboard(run, store, out, options)
        m = report["evaluators"]["facets"]["metrics"]
        click.echo(f"facets: {m['analysed']} features analysed, {m['rows']} rows at {m['rows_per_second']:.0f} rows/s, "
                   f"mean facets {m['mean_facets']}, multi-facet fraction {m['multi_facet_fraction']}")
        click.echo(f"Wrote {Path(out) / 'index.html'} and {Path(out) / 'report.json'}")

    @cli.command(name="vector-page")
    @click.argument("vector")
    @click.argument("run")
    @click.option("--store", required=True, help="The store the run was trained on (its rows give the latents' contexts).")
    @click.option("--out", required=True, help="Folder for vector_<name>.html (a dashboard's --out puts it beside the feature pages).")
    @click.option("--k", "max_latents", type=int, default=8, show_default=True, help="At most this many latents in the non-negative fit.")
    @click.option("--contexts", type=int, default=5, show_default=True, help="Top contexts shown per fitted latent.")
    def vector_page_command(vector: str, run: str, store: str, out: str, max_latents: int, contexts: int) -> None:
        """A steering vector's page: its decomposition in the run's latents, with their top contexts."""
        from .vector_page import vector_page

        click.echo(f"Wrote {vector_page(vector, run, store, out, k=max_latents, n_contexts=contexts)}")

    @cli.command(name="facets-vision")
    @click.option("--model", required=True, metavar="MODULE:CALLABLE", help="Python callable returning the torch nn.Module (no pickles).")
    @click.option("--weights", default=None, help="A .safetensors state dict to load into it.")
    @click.option("--images", required=True, help="Folder of images (.png/.jpg/...); unreadable files are skipped and counted.")
    @click.option("--size", default="224x224", show_default=True, help="HEIGHTxWIDTH the images are resized to.")
    @click.option("--mode", type=click.Choice(["RGB", "L"]), default="RGB", show_default=True, help="Colour (RGB) or grey (L) images.")
    @click.option("--layer", required=True, help="Module whose output holds the unit (model.named_modules() name).")
    @click.option("--unit", type=int, required=True, help="Channel or neuron index in that output.")
    @click.option("--embed-layer", required=True, help="Module whose output embeds the top images (e.g. the penultimate layer).")
    @click.option("--top-n", type=int, default=64, show_default=True, help="Top images clustered into facets.")
    @click.option("--steps", type=int, default=20, show_default=True, help="Synthesis steps per octave.")
    @click.option("--out", required=True, help="Folder for facets.png / ppgn.png, facets.json (and feature.html with --method both).")
    @click.option("--method", type=click.Choice(["pixel", "ppgn", "both"]), default="pixel", show_default=True,
                  help="pixel: activation maximisation per facet (Nguyen 2016); ppgn: Plug & Play Generative Network chains; both.")
    @click.option("--ppgn", "ppgn_dir", default=None, help="Folder of a trained PPGN (generator, DAE prior); trained there first if empty.")
    @click.option("--dictionary", default=None, help="A run folder: the unit is then that dictionary's latent over --layer.")
    @click.option("--condition", type=click.Choice(["activation", "log-softmax"]), default="activation", show_default=True,
                  help="PPGN condition: the unit's activation, or log p(class) over --layer's outputs (a class logit layer).")
    @click.option("--chains", type=int, default=4, show_default=True, help="PPGN chains.")
    @click.option("--chain-steps", type=int, default=200, show_default=True, help="Updates per PPGN chain.")
    @click.option("--every", type=int, default=20, show_default=True, help="Keep a PPGN sample every N updates.")
    @click.option("--feature-layer", default=None, help="Layer whose code the PPGN generator inverts (default: --embed-layer).")
    @click.option("--ppgn-epochs", type=int, default=40, show_default=True, help="Generator epochs when the PPGN is trained.")
    @click.option("--seed", type=int, default=0, show_default=True)
    def facets_vision_command(model: str, weights: str | None, images: str, size: str, mode: str, layer: str, unit: int,
                              embed_layer: str, top_n: int, steps: int, out: str, method: str, ppgn_dir: str | None,
                              dictionary: str | None, condition: str, chains: int, chain_steps: int, every: int,
                              feature_layer: str | None, ppgn_epochs: int, seed: int) -> None:
        """Facets of a unit of an image model, one synthetic image per facet beside its real top images."""
        import featureforge

        from .vision_run import facets_vision

        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise featureforge.OptionError(f"--size {size!r} is not HEIGHTxWIDTH; write e.g. --size 224x224") from None
        s = facets_vision(model, weights, images, (h, w), mode, layer, unit, embed_layer, out, top_n, steps, method=method,
                          ppgn=ppgn_dir, dictionary=dictionary, chains=chains, chain_steps=chain_steps, every=every,
                          condition=condition, feature_layer=feature_layer, ppgn_epochs=ppgn_epochs, seed=seed)
        click.echo(f"{s['images']} images read, {s['skipped_unreadable']} unreadable skipped")
        if "facets" in s:
            click.echo(f"pixel: facets: {s['facets']} (sizes {s['sizes']}), synthetic activations {s['synthetic_activations']} vs best real "
                       f"{s['best_real_activation']}; wrote {s['grid']}")
        if "ppgn" in s:
            p = s["ppgn"]
            click.echo(f"ppgn: {p['chains']} chains x {len(p['kept_steps'])} samples, mean activation {p['mean_activation_fraction']} of the "
                       f"best real; real facets reached {p['real_facets_reached']} of {p['real_facets']}; wrote {p['grid']}"
                       + (f" (PPGN trained into {p['ppgn_dir']})" if p["trained_now"] else ""))
        click.echo(f"Wrote {Path(out) / 'facets.json'}" + (f" and {s['page']}" if "page" in s else ""))
