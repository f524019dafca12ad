"""``featureforge dashboard``: the ``facets`` evaluator run with its site written to ``--out``."""

from __future__ import annotations

from typing import Any

import click


def dashboard(run: str, store: str, out: str, options: tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
    """Evaluate ``run`` on ``store`` with the facets evaluator; ``out`` gets report.json and the site."""
    from pathlib import Path

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
        from pathlib import Path

        report = dashboard(run, store, out, options)
        m = report["evaluators"]["facets"]["metrics"]
        click.echo(f"facets: {m['analysed']} features analysed, {m['rows']} rows at {m['rows_per_second']:.0f} rows/s, "
                   f"mean facets {m['mean_facets']}, multi-facet fraction {m['multi_facet_fraction']}")
        click.echo(f"Wrote {Path(out) / 'index.html'} and {Path(out) / 'report.json'}")
