"""The ``featureforge`` command line: thin click commands over the library API.

Errors are shown as one ``Error: ...`` line (exit code 1); ``--debug`` (or
``FEATUREFORGE_DEBUG=1``) shows the traceback instead. Plugins add commands through the
``featureforge_register_commands`` hook.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from .errors import FeatureforgeError


class FeatureforgeGroup(click.Group):
    """A click group that turns exceptions into one-line errors unless --debug is given."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if _debug(ctx):
                raise
            if isinstance(exc, FeatureforgeError):
                message = str(exc)
            elif isinstance(exc, KeyboardInterrupt):
                raise
            else:
                message = f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            click.echo(f"Error: {message}", err=True)
            ctx.exit(1)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        """An unknown command may be a plugin's that is not installed: say where commands come from."""
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            raise click.UsageError(f"no command {args[0]!r}; plugins add commands once their distribution is installed "
                                   "(`featureforge plugins` lists what is, `featureforge --help` every command)")
        return super().resolve_command(ctx, args)


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get("FEATUREFORGE_DEBUG") == "1"


class TrainerFormat(click.Choice):
    """``--format``: the formats the installed trainers declare (``DictionaryTrainer.formats``), looked up when used."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from .plugins import get_registry

        registry = get_registry()
        found = [f for name in registry.names("trainer") for f in registry.get("trainer", name).formats]
        return tuple(dict.fromkeys(found))

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns it; the registry decides
        pass


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=FeatureforgeGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="featureforge")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Learn and study feature dictionaries (sparse autoencoders and relatives)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plugins(as_json: bool) -> None:
    """List installed sources, trainers and evaluators with their options."""
    from .plugins import get_registry

    data = get_registry().describe()
    if as_json:
        _echo_json(data)
        return
    for row in data["plugins"]:
        click.echo(f"{row['kind']:<9} {row['name']:<16} {row['distribution']} {row['version']}  {row['description']}")
        for opt in row["options"]:
            setting = f"{opt['name']}={opt['default']}"
            click.echo(f"{'':<10}-o {setting:<28} ({opt['type']}) {opt['help']}")
    for command in data["commands"]:
        click.echo(f"{'command':<9} {command['name']:<16} {command['distribution']} {command['version']}  {command['description']}")
    for problem in data["problems"]:
        click.echo(f"problem   {problem['distribution']} {problem['version']}: {problem['message']}")


@cli.command()
@click.option("--source", "source_name", required=True, help="Activation source name (see `featureforge plugins`).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Source option; repeatable.")
@click.option("--store", required=True, help="Store path or fsspec URL (e.g. stores/my-store, s3://bucket/x).")
@click.option("--rows", type=int, default=None, help="Rows to cache (required for unbounded sources).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--rows-per-chunk", type=int, default=None, help="Rows per Zarr chunk (default: about 16 MiB).")
@click.option("--rank", type=int, default=None, help="This writer's rank (default: torchrun's RANK or 0).")
@click.option("--world-size", type=int, default=None, help="Number of writers (default: torchrun's WORLD_SIZE or 1).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store holding other activations (deletes only the store's own files).")
@click.option("--repair", is_flag=True, help="Check every committed chunk's checksum and rewrite damaged chunks and metadata.")
@click.option("--write-shuffle-rows", type=int, default=None,
              help="Streaming sources: rows per write-side shuffle window (default: up to 131072, 512 MiB; 0: source order).")
def cache(source_name: str, options: tuple[str, ...], store: str, rows: int | None, dtype: str, rows_per_chunk: int | None,
          rank: int | None, world_size: int | None, overwrite: bool, repair: bool, write_shuffle_rows: int | None) -> None:
    """Cache a source's activations into a Zarr store (a rerun continues a partial store)."""
    from . import api
    from .errors import BadInputError

    if store.startswith("memory://"):
        raise BadInputError(f"--store {store} would vanish when this command ends; give a folder or a persistent URL (memory:// works from Python)")
    opened = api.cache(source_name, list(options), store=store, rows=rows, dtype=dtype, rows_per_chunk=rows_per_chunk,
                       rank=rank, world_size=world_size, overwrite=overwrite, repair=repair,
                       write_shuffle_rows=write_shuffle_rows)
    state = "complete" if opened.complete else "waiting for other writers"
    widths = f"{opened.d_in}" if len(opened.sites) == 1 else f"({', '.join(str(s['d_in']) for s in opened.site_records)}) at {len(opened.sites)} sites"
    click.echo(f"Wrote {opened.rows} rows × {widths} ({opened.dtype}) to {opened.url} ({state})")


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--verify", is_flag=True, help="Read every committed chunk and check its size and checksum.")
def info(store: str, as_json: bool, verify: bool) -> None:
    """Describe a store: rows, width, dtype, chunks, provenance and normalisation."""
    from .store._view import open_store

    opened = open_store(store)
    data = opened.info()
    if verify:
        _verify(opened, data)
    if as_json:
        _echo_json(data)
        return
    _print_info(data)


def _verify(opened: Any, data: dict[str, Any]) -> None:
    """Check the whole store; damage is one ``Error:`` line naming the chunks and the repair command."""
    from .errors import CorruptStoreError
    from .progress import progress_bar

    with progress_bar(data["rows"], f"verify {opened.url}") as bar:
        damaged = opened.verify(bar.update)
    data["verified"] = {"chunks": data["chunks_committed"], "damaged": damaged, "checksums": data["checksums"]}
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise CorruptStoreError(f"store {opened.url}: {damaged[0]}{more}; repair it with `{opened.repair_command()}`")
    what = "sizes and crc32c checksums" if data["checksums"] else "sizes only: this store predates checksums (format 1), recache it to add them"
    click.echo(f"verified     {data['chunks_committed']} committed chunks, {data['rows']:,} rows: no damage ({what})", err=True)


def _print_info(data: dict[str, Any]) -> None:
    click.echo(f"store        {data['store']}")
    status = "complete" if data["complete"] else f"partial ({data['rows']} of {data['rows_allocated']} rows committed)"
    click.echo(f"rows         {data['rows']:,}  [{status}]")
    click.echo(f"d_in         {data['d_in']}")
    click.echo(f"dtype        {data['dtype']}")
    click.echo(f"columns      {', '.join(f'{k}:{v}' for k, v in data['columns'].items())}")
    click.echo(f"chunks       {data['chunks_committed']}/{data['chunks']} committed, {data['rows_per_chunk']} rows each, {data['writers']} writer(s)")
    if data.get("write_shuffle_rows"):
        click.echo(f"write shuffle  rows permuted in windows of {data['write_shuffle_rows']:,} rows per writer (docs/store.md)")
    src = data["source"]
    click.echo(f"source       {src['name']} ({src.get('distribution', '')} {src.get('version', '')})")
    for key, value in (src.get("options") or {}).items():
        click.echo(f"  {key:<22} {value}")
    if data["provenance"]:
        click.echo("provenance")
        for key, value in data["provenance"].items():
            click.echo(f"  {key:<22} {value}")
    norm = data["normalisation"]
    if "mean_squared_norm" in norm:
        click.echo(f"normalisation  E|x|^2={norm['mean_squared_norm']:.6g}  scale={norm['scale']:.6g}  "
                   f"mean|mean|={norm.get('mean_abs_mean', 0):.4g}  mean std={norm.get('mean_std', 0):.4g}")
    if data["ground_truth"]:
        click.echo(f"ground truth {', '.join(data['ground_truth'])}")
    if data.get("sites"):
        click.echo(f"sites        {len(data['sites'])}, rows aligned (row i of every site is the same token)")
        for site in data["sites"]:
            norm = site.get("normalisation") or {}
            where = f"{site.get('hook') or '-'} ({site.get('io') or 'output'})"
            scale = f"  scale={norm['scale']:.6g}" if "scale" in norm else ""
            click.echo(f"  {site['name']:<28} column {site['column']:<8} d_in {site['d_in']:<6} {where}{scale}")


def _option_names(cls: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else set()


def _load_train_config(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """Read ``--config run.toml`` before the other options, as their defaults (flags given still win)."""
    if path is None:
        return None
    from .training._run_file import read_run_file

    parsed = read_run_file(path)
    renamed = {"trainer": "trainer_name", "source": "source_name"}
    defaults = {renamed.get(key, key): value for key, value in parsed.top.items()}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["train_config_tables"] = {"options": parsed.options, "train_options": parsed.train_options}
    return path


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), callback=_load_train_config, is_eager=True, expose_value=False,
              help="TOML file of settings: top-level keys are the long flags (batch_size = 2048), [options] are -o, "
                   "[train_options] are -t; flags given here override it.")
@click.option("--trainer", "trainer_name", required=True, help="Trainer name (see `featureforge plugins`).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Trainer option; repeatable. A comma list on a scalar option (k=16,32,64) trains a sweep from one pass. "
                   "With --source, a key only the source has goes to the source.")
@click.option("--store", default=None, help="Store path or fsspec URL (or --source to stream without one).")
@click.option("--source", "source_name", default=None,
              help="Train straight from this source (see `featureforge plugins`), no store: a bounded shuffle buffer (-t buffer_rows), "
                   "its first -t holdout_rows rows held out; --resume restarts it at the recorded row.")
@click.option("-s", "--source-option", "source_options", multiple=True, metavar="KEY=VALUE",
              help="Option of --source; repeatable (also a -o key the trainer does not have).")
@click.option("--out", required=True, help="Run folder (a sweep gets one sub-folder per setting).")
@click.option("--rows", type=int, default=None, help="Training rows (default: --epochs passes over the training chunks).")
@click.option("--epochs", type=float, default=None, help="Passes over the training chunks (default 1).")
@click.option("--batch-size", type=int, default=None, help="Rows per step, summed over ranks (default 4096).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default: the trainer's suggestion).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None, help="Compute dtype (bf16 autocast, fp32 master weights).")
@click.option("--threads", type=int, default=None, help="torch intra-op threads.")
@click.option("--seed", default=None, help="Seed of initialisation and data order (default 0); a comma list (0,1,2) trains one member per "
                                           "initialisation seed in one pass over the same batches.")
@click.option("-t", "--train-option", "train_options", multiple=True, metavar="KEY=VALUE",
              help="Further loop option (warmup_steps, decay_fraction, log_every, checkpoint_every, holdout_rows, dead_after, device, data_shards, ...).")
@click.option("--site", default=None, help="On a store of several sites: the site the dictionary reads (default: the first; `featureforge info` lists them).")
@click.option("--sites", default=None, metavar="all|A,B",
              help="On a store of several sites: one dictionary per site (all, or a comma list) from one pass over the data, each in OUT/<site>.")
@click.option("--tee", default=None, help="With --source: also write the streamed training rows into this store (for later runs).")
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint (bit-identical to an uninterrupted run).")
@click.option("--overwrite", is_flag=True, help="Delete an existing run folder and start again.")
@click.pass_context
def train(ctx: click.Context, trainer_name: str, options: tuple[str, ...], store: str | None, source_name: str | None,
          source_options: tuple[str, ...], out: str, rows: int | None, epochs: float | None,
          batch_size: int | None, lr: float | None, dtype: str | None, threads: int | None, seed: str | None,
          site: str | None, sites: str | None, train_options: tuple[str, ...], tee: str | None, resume: bool, overwrite: bool) -> None:
    """Train a dictionary on a store (or streamed from a source) with a registered trainer."""
    from . import api
    from .errors import BadInputError
    from .options import split_pairs
    from .plugins import get_registry

    tables = ctx.meta.get("train_config_tables") or {"options": {}, "train_options": {}}
    given = {"rows": rows, "epochs": epochs, "batch_size": batch_size, "lr": lr, "dtype": dtype, "threads": threads, "seed": seed,
             "site": site, "sites": sites, "tee": tee}
    config: dict[str, Any] = {**tables["train_options"], **{k: v for k, v in given.items() if v is not None},
                              **dict(split_pairs(train_options, "log_every=100", flag="-t"))}
    trainer_options = {**tables["options"], **dict(split_pairs(options, "k=32"))}
    streamed: dict[str, Any] = {}
    if source_name is not None:
        own = dict(split_pairs(source_options, "model=gpt2", flag="-s"))
        source_keys = _option_names(get_registry().get("source", source_name))
        trainer_keys = _option_names(get_registry().get("trainer", trainer_name))
        own.update({k: trainer_options.pop(k) for k in list(trainer_options) if k in source_keys and k not in trainer_keys})
        streamed = {"source": source_name, "source_options": own}
    elif source_options:
        raise BadInputError("-s/--source-option needs --source; pass --source NAME or leave out -s")
    runs = api.train(trainer_name, trainer_options, store=store, out=out, resume=resume, overwrite=overwrite, **streamed, **config)
    for run in runs:
        click.echo(f"Trained {trainer_name} into {run}")


@cli.command(name="evaluate")
@click.argument("run")
@click.option("--store", default=None, help="Store path or fsspec URL to evaluate on (default: the run's own; a streamed run's held-out rows).")
@click.option("--evaluator", "evaluators", multiple=True, metavar="NAME",
              help="Evaluator to run; repeatable (default: reconstruction, plus ground-truth when the store has it).")
@click.option("--rows", type=int, default=None,
              help="Eval rows (default: the run's held-out rows on its own store, else the store's first 65,536).")
@click.option("-o", "--option", "options", multiple=True, metavar="EVALUATOR.KEY=VALUE",
              help="An evaluator's option, e.g. -o downstream.max_sequences=64; repeatable (names the evaluator if not given).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def evaluate_command(run: str, store: str, evaluators: tuple[str, ...], rows: int | None, options: tuple[str, ...], as_json: bool) -> None:
    """Measure a trained run on a store; writes RUN/report.json and plots into RUN/plots/.

    RUN may be a sweep's folder (the --out of a sweep): every member is evaluated, and
    RUN/sweep.json and RUN/sweep.png summarise them (L0 against FVU and the downstream score).
    """
    from .evaluation import _sweeps as sweep
    from .evaluation._evaluate import evaluate, report_path, summary_lines
    from .options import evaluator_options

    chosen = evaluator_options(evaluators, options)
    is_sweep = sweep.is_sweep(run)
    report = evaluate(run, store=store, evaluators=chosen, rows=rows)
    if as_json:
        _echo_json(report)
    else:
        for line in (sweep.summary_lines(report) if is_sweep else summary_lines(report)):
            click.echo(line)
    written = [Path(run) / sweep.SWEEP_FILE, Path(run) / sweep.SWEEP_PLOT] if is_sweep else [report_path(run)]
    click.echo(f"Wrote {', '.join(map(str, written))}", err=as_json)


@cli.command(name="compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--store", "stores", multiple=True,
              help="Store to compare on: once for all runs, or once per run in their order (stores of different models over the same "
                   "tokens). Default: each run's recorded store.")
@click.option("--out", default=None, help="Folder to write (compare.json, pairs/, runs/, plots/); default comparisons/A__B[...].")
@click.option("--rows", type=int, default=None, help="Eval rows (default: the runs' shared held-out rows, else the store's first 65,536).")
@click.option("--threshold", "thresholds", type=float, multiple=True, help="Score above which a matched pair counts as shared; repeatable (default 0.5, 0.7, 0.9).")
@click.option("--rule-threshold", type=float, default=0.7, show_default=True,
              help="Paulo & Belrose's rule: shared when encoder and decoder both match above it.")
@click.option("--excess-threshold", type=float, default=0.5, show_default=True,
              help="Gurnee et al.'s rule: universal when the excess correlation over the rotated baseline is above it.")
@click.option("--baseline/--no-baseline", default=None, help="Rotated-units baseline (default: when every run has at most 2,048 units).")
@click.option("--memory", type=int, default=1 << 25, show_default=True, help="Accumulator floats per pass over the rows (bounds memory).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def compare_command(runs: tuple[str, ...], stores: tuple[str, ...], out: str | None, rows: int | None, thresholds: tuple[float, ...],
                    rule_threshold: float, excess_threshold: float, baseline: bool | None, memory: int, as_json: bool) -> None:
    """Match the latents (or neurons) of two or more runs: shared fraction, best matches, universal units.

    Pairwise for more than two runs; a sweep folder stands for its members (--seed 0,1,2).
    """
    from . import api
    from .comparison import DEFAULT_THRESHOLDS

    target = out or str(Path("comparisons") / "__".join(Path(r).name for r in runs))
    report = api.compare(list(runs), store=list(stores) or None, out=target, rows=rows, thresholds=thresholds or DEFAULT_THRESHOLDS,
                         rule_threshold=rule_threshold, excess_threshold=excess_threshold, baseline=baseline, memory=memory)
    if as_json:
        _echo_json(report)
    else:
        for line in _compare_lines(report):
            click.echo(line)
    click.echo(f"Wrote {Path(target) / 'compare.json'}", err=as_json)


def _compare_lines(report: dict[str, Any]) -> list[str]:
    rule = report["rule_threshold"]
    lines = [f"{report['rows']['rows']:,} rows ({report['rows']['selection']})"]
    for p in report["pairs"]:
        parts = []
        for kind in ("decoder", "encoder", "activation"):
            if kind in p:
                parts.append(f"{kind} shared@{rule} {p[kind]['shared_fraction'].get(str(rule), p[kind]['shared_fraction'].get(str(float(rule))))}")
        if "paulo_belrose" in p:
            parts.append(f"enc+dec shared {p['paulo_belrose']['shared_fraction']}")
        if "universal_fraction" in p["activation"]:
            parts.append(f"excess corr {p['activation']['excess_mean']}")
        lines.append(f"{p['a']} vs {p['b']}: " + ", ".join(parts))
    for r in report["runs"]:
        if "universal" in r:
            lines.append(f"{r['name']}: {r['universal']} of {r['d_dict']} units universal (excess correlation > {report['excess_threshold']})")
    return lines


@cli.command(name="ablate")
@click.argument("run")
@click.option("--from-compare", "compare", default=None,
              help="A comparison folder (featureforge compare --out) the run is part of: the units are taken from its runs/K.json and the "
                   "result is written to its ablation/K.json.")
@click.option("--top", type=float, default=None, help="With --from-compare: ablate this fraction of the units, highest score first (0.05: the top 5%).")
@click.option("--above", type=float, default=None,
              help="With --from-compare: ablate the units scoring above it (default: the comparison's --excess-threshold, its universal units).")
@click.option("--by", type=click.Choice(["excess", "best"]), default="excess", show_default=True,
              help="Score: Gurnee et al.'s excess correlation over the rotated baseline, or the mean best correlation with the other runs.")
@click.option("--units", default=None, help="Units to ablate instead: a comma list (3,17,40) or a file of them (JSON list or numbers).")
@click.option("--store", default=None, help="Store whose source runs the live model (default: the comparison's store of the run, else the run's own).")
@click.option("--mode", type=click.Choice(["mean", "zero"]), default="mean", show_default=True,
              help="mean: clamp each unit's code to its mean over the store's rows; zero: set it to 0.")
@click.option("--random-sets", type=int, default=3, show_default=True, help="Frequency-matched random sets of the same size to ablate for comparison.")
@click.option("--sequences", type=int, default=64, show_default=True, help="Held-out sequences (documents after the store's) the CE is measured on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sets.")
@click.option("--out", default=None, help="Also write the result to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def ablate_command(run: str, compare: str | None, top: float | None, above: float | None, by: str, units: str | None, store: str | None,
                   mode: str, random_sets: int, sequences: int, seed: int, out: str | None, as_json: bool) -> None:
    """Ablate a run's units (a comparison's universal set, or given) and frequency-matched random sets: the CE-loss change of each.

    The functional-impact test of Gurnee et al. 2024: does removing the universal units hurt the
    model's next-token loss more than removing as many units that fire as often?
    """
    from . import api
    from .comparison._ablate import summary_lines

    result = api.ablate(run, units=_unit_list(units) if units is not None else None, compare=compare, top=top, above=above, by=by,
                        store=store, mode=mode, random_sets=random_sets, max_sequences=sequences, seed=seed, out=out)
    if as_json:
        _echo_json(result)
    else:
        for line in summary_lines(result):
            click.echo(line)
    written = [p for p in (result.get("file"), out) if p]
    if written:
        click.echo(f"Wrote {', '.join(map(str, written))}", err=as_json)


def _unit_list(text: str) -> list[int]:
    """``--units``: a comma list, or a file holding a JSON list ({"units": [...]} too) or numbers separated by commas or spaces."""
    from .errors import OptionError

    path = Path(text)
    if text and path.is_file():
        body = path.read_text()
        try:
            data = json.loads(body)
        except ValueError:
            data = body.replace(",", " ").split()
        if isinstance(data, dict):
            data = data.get("units", data.get("universal"))
        if not isinstance(data, list):
            raise OptionError(f"--units file {path} holds no list of units; write a JSON list or numbers separated by commas")
        items = [str(x) for x in data]
    else:
        items = [t for t in text.replace(" ", "").split(",") if t]
    try:
        return [int(t) for t in items]
    except ValueError:
        raise OptionError(f"--units {text!r} is not a comma list of unit numbers nor a file of them; pass e.g. --units 3,17,40") from None


@cli.command(name="export")
@click.argument("run")
@click.option("--format", "fmt", type=TrainerFormat(), required=True, help="A format the run's trainer declares.")
@click.option("--out", required=True, help="Folder to write.")
def export_command(run: str, fmt: str, out: str) -> None:
    """Write a trained dictionary in another library's layout (e.g. SAELens', sparsify's)."""
    from . import api

    api.export(run, fmt, out)
    click.echo(f"Exported {run} as {fmt} to {out}")


@cli.command(name="import")
@click.argument("src")
@click.option("--format", "fmt", type=TrainerFormat(), required=True, help="A format an installed trainer declares.")
@click.option("--out", required=True, help="Run folder to create.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
def import_command(src: str, fmt: str, out: str, overwrite: bool) -> None:
    """Turn another library's dictionary folder (e.g. SAELens, sparsify) into a featureforge run."""
    from . import api

    api.import_run(src, fmt, out, overwrite=overwrite)
    click.echo(f"Imported {src} ({fmt}) into {out}")


@cli.command(name="steer")
@click.argument("run", required=False)
@click.option("--store", default=None, help="The store the run was trained on (its source rebuilds the live model); not needed with --vector alone.")
@click.option("--latent", "latents", multiple=True, type=int, help="Latent to intervene on; repeatable.")
@click.option("--vector", "vectors", multiple=True, help="A steering vector folder (`featureforge vector`); repeatable: several span a subspace.")
@click.option("--alpha", default="4", show_default=True, help="Strength α, or a comma list (0,2,4,8) for a sweep in one call.")
@click.option("--mode", type=click.Choice(["add", "clamp", "ablate"]), default="add", show_default=True,
              help="add: x + α·u·d_i; clamp: set the code (or the directions' component) to α·u; ablate: zero it (directions: project out).")
@click.option("--units", type=click.Choice(["typical", "absolute"]), default="typical", show_default=True,
              help="u: the latent's typical firing value on the store (a vector's typical projection), or 1.")
@click.option("--as-directions", is_flag=True, help="Steer along the latents' decoder rows (directions, like a vector) instead of editing codes.")
@click.option("--hook", "hooks", multiple=True, help="Module to apply a direction at (a layer); repeatable; default the vector's own hook.")
@click.option("--prompt", required=True, help="Text to continue (causal LMs) or embed (encoders).")
@click.option("--positions", default=None, help="Comma list of prompt positions to intervene at (negative: from the end); default every position.")
@click.option("--max-new-tokens", type=int, default=20, show_default=True, help="Tokens generated with and without the intervention.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy; else sampling with --seed.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--top", type=int, default=10, show_default=True, help="Promoted/suppressed tokens shown.")
@click.option("--device", default="", help="Device of the live model (default: the store's source option).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def steer_command(run: str | None, store: str | None, latents: tuple[int, ...], vectors: tuple[str, ...], alpha: str, mode: str, units: str,
                  as_directions: bool, hooks: tuple[str, ...], prompt: str, positions: str | None, max_new_tokens: int, temperature: float,
                  seed: int, top: int, device: str, as_json: bool) -> None:
    """Steer the live model with a run's latents or steering vectors: outputs with and without the edit."""
    from .errors import OptionError
    from .steering import steer, summary_lines as steer_lines

    try:
        alphas = [float(a) for a in alpha.split(",") if a.strip()]
        chosen = [int(p) for p in positions.split(",") if p.strip()] if positions else None
    except ValueError:
        raise OptionError(f"--alpha {alpha!r} / --positions {positions!r} must be numbers or comma lists of numbers, e.g. --alpha 0,2,4,8") from None
    if run is not None and not latents:
        raise OptionError(f"RUN {run} is given without --latent; name its latents (--latent I), or steer with --vector alone")
    result = steer(run, store=store, latents=list(latents), vector=list(vectors) or None, prompt=prompt, alphas=alphas, mode=mode,
                   units=units, positions=chosen, hooks=list(hooks) or None, as_directions=as_directions, max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=seed, top=top, device=device)
    if as_json:
        _echo_json(result.to_dict())
        return
    for line in steer_lines(result):
        click.echo(line)


@cli.command(name="vector")
@click.option("--source", "source_name", required=True, help="A source that runs its model (e.g. hf).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Source option, e.g. -o model=DIR -o hook=transformer.h.1; repeatable.")
@click.option("--positive", required=True, help="Prompts with the concept: .txt (one a line, or blank-line separated) or .jsonl.")
@click.option("--negative", required=True, help="Prompts without it, same format (paired line for line with --method pca).")
@click.option("--out", required=True, help="Folder to write (config.json + weights.safetensors).")
@click.option("--method", type=click.Choice(["mean", "pca"]), default="mean", show_default=True,
              help="mean: difference of the sets' means (contrastive activation addition); pca: top direction of the paired differences.")
@click.option("--reduce", type=click.Choice(["mean", "last"]), default="mean", show_default=True,
              help="One row per prompt: the mean over its tokens, or its last token.")
@click.option("--overwrite", is_flag=True, help="Replace an existing vector folder.")
def vector_command(source_name: str, options: tuple[str, ...], positive: str, negative: str, out: str, method: str, reduce: str,
                   overwrite: bool) -> None:
    """Make a steering vector at a hook from two prompt sets (saved as a small folder)."""
    from .vectors import make_vector

    v = make_vector(source_name, list(options), positive=positive, negative=negative, out=out, method=method, reduce=reduce,
                    overwrite=overwrite)
    st = v.stats
    extra = f", top direction explains {st['explained_by_top']:.3f} of the paired differences" if "explained_by_top" in st else ""
    click.echo(f"{method} difference of {st['positive_prompts']} positive and {st['negative_prompts']} negative prompts at {v.hook} "
               f"(d={v.d_in}): typical projection {v.typical:.4g} (|difference| {st['difference_norm']:.4g}, rows' RMS norm "
               f"{st['row_rms_norm']:.4g}){extra}")
    click.echo(f"Wrote {out}")


@cli.command(name="decompose")
@click.argument("vector")
@click.argument("run")
@click.option("--store", required=True, help="The store the run was trained on (typical values, top contexts).")
@click.option("--k", "max_latents", type=int, default=8, show_default=True, help="At most this many latents in the non-negative fit.")
@click.option("--top", type=int, default=10, show_default=True, help="Latents listed by cosine.")
@click.option("--contexts", type=int, default=3, show_default=True, help="Top contexts shown per fitted latent (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def decompose_command(vector: str, run: str, store: str, max_latents: int, top: int, contexts: int, as_json: bool) -> None:
    """Express a steering vector in a dictionary's latents: non-negative sparse fit and cosine ranking."""
    from .decomposition import decompose, summary_lines as decompose_lines

    result = decompose(vector, run, store=store, k=max_latents, top=top, contexts=contexts)
    if as_json:
        _echo_json(result.to_dict())
        return
    for line in decompose_lines(result):
        click.echo(line)


def build_cli() -> click.Group:
    from .plugins import get_registry

    get_registry().add_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the process settings first (before anything loads torch)."""
    from .runtime import short_openmp_spin

    short_openmp_spin()
    try:
        command = build_cli()
    except FeatureforgeError as exc:  # pragma: no cover - plugin loading reports its own problems
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    command.main(args=argv, prog_name="featureforge")


if __name__ == "__main__":  # pragma: no cover
    main()
