"""The library API: the CLI's verbs as Python functions with the same names and options."""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping, Sequence

from .errors import OptionError
from .comparison import ablate, compare
from .evaluation._evaluate import evaluate
from .plugins import get_registry
from .roles import ActivationSource
from .store._location import Location
from .store._creation import StoreSpec, finalize, prepare_store, source_sites, writer_lock
from .store._view import ActivationStore, open_store
from .store._format import STORAGE_DTYPES, default_rows_per_chunk, default_write_shuffle_rows
from .store._writer import StoreWriter

__all__ = ["ablate", "cache", "compare", "decompose", "evaluate", "export", "import_run", "load", "make_source", "open_store", "steer", "steered", "train", "vector"]


def make_source(source: str | ActivationSource, options: Mapping[str, Any] | Sequence[str] | None = None) -> ActivationSource:
    """An ActivationSource instance from a registered name and options (or pass one through)."""
    if isinstance(source, ActivationSource):
        if options:
            raise OptionError("pass options to the source's constructor, not to cache(), when giving a source instance")
        return source
    cls = get_registry().get("source", source)
    return cls(options)


def _distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit rank/world size, else torch.distributed's, else torchrun's environment, else 0/1."""
    if rank is not None or world_size is not None:
        return int(rank or 0), int(world_size or 1)
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def cache(
    source: str | ActivationSource,
    options: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    store: str | os.PathLike,
    rows: int | None = None,
    dtype: str = "float32",
    rows_per_chunk: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    repair: bool = False,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    write_shuffle_rows: int | None = None,
    hook: str | Sequence[str] | None = None,
) -> ActivationStore:
    """Write a source's activations into a store, continuing a partly written one.

    Several writers (``rank``/``world_size``, or torchrun's environment) fill disjoint chunks of
    one store; run each with the same arguments. ``repair`` checks every committed chunk of this
    writer (size and checksum) and rewrites the damaged ones. ``write_shuffle_rows`` is the
    write-side shuffle window of a streaming source (default: up to 131,072 rows, 512 MiB; 0: rows
    in the source's order); sources that produce rows by index are stored in row order. ``hook``
    (a name or a list of names) is the source's ``hook`` option: a list caches every hook point in
    one pass, one store with a column per site (docs/store.md, "Several sites"). Returns the opened
    store.
    """
    from .progress import progress_bar

    if dtype not in STORAGE_DTYPES:
        raise OptionError(f"unknown dtype {dtype!r}; use one of: {', '.join(STORAGE_DTYPES)}")
    rank, world_size = _distributed_rank(rank, world_size)
    if not 0 <= rank < world_size:
        raise OptionError(f"rank {rank} is outside world size {world_size}; use 0 <= rank < world size")
    if hook is not None:
        options = _with_hook(options, hook)
    src = make_source(source, options)
    total = src.n_rows
    if rows is not None:
        if rows <= 0:
            raise OptionError(f"--rows must be positive, got {rows}")
        total = rows if total is None else min(rows, total)
    if total is None:
        raise OptionError(f"source {src.name!r} is unbounded; say how many rows to cache with --rows N")
    d_in = int(src.d_in)
    sites = source_sites(src)
    widths = [int(site["d_in"]) for site in sites or []] or [d_in]
    rpc = int(rows_per_chunk) if rows_per_chunk is not None else default_rows_per_chunk(max(widths), dtype)
    if rpc <= 0:
        raise OptionError(f"--rows-per-chunk must be positive, got {rpc}; leave it out for chunks of about 16 MiB")
    columns = {"acts": dtype} | {site["column"]: dtype for site in (sites or [])[1:]}
    for name, logical in src.columns.items():
        columns[name] = dtype if name == "grads" else logical
    if src.random_access:
        if write_shuffle_rows:
            raise OptionError(
                f"source {src.name!r} produces rows by index, so its store is written in row order; leave out --write-shuffle-rows"
            )
        shuffle = 0
    elif write_shuffle_rows is None:
        shuffle = default_write_shuffle_rows(sum(widths), dtype, grads="grads" in columns)
    elif write_shuffle_rows < 0:
        raise OptionError(f"--write-shuffle-rows must be 0 (off) or positive, got {write_shuffle_rows}")
    else:
        shuffle = int(write_shuffle_rows)
    registration = get_registry().registration_of(type(src))
    spec = StoreSpec(
        d_in=d_in,
        dtype=dtype,
        rows=int(total),
        rows_per_chunk=rpc,
        writers=world_size,
        columns=columns,
        source={
            "name": src.name,
            "options": src.options_dict(),
            "distribution": registration.distribution if registration else type(src).__module__,
            "version": registration.version if registration else "",
        },
        provenance=src.provenance(),
        write_shuffle_rows=shuffle,
        sites=sites,
    )
    location = Location(store, storage_options)
    opened = prepare_store(location, spec, rank=rank, overwrite=overwrite, repair=repair, ground_truth=src.ground_truth)
    with writer_lock(opened, rank):
        writer = StoreWriter(opened, src, rank=rank, world_size=world_size)
        label = f"cache {src.name}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else "")
        if repair:
            with progress_bar(writer.committed()[1], f"repair {src.name}", enabled=None if progress else False) as bar:
                writer.progress = bar.update
                writer.repair()
        _, done_rows = writer.committed()
        with progress_bar(writer.rows_to_write(), label, initial=done_rows, enabled=None if progress else False) as bar:
            writer.progress = bar.update
            writer.run()
    return finalize(opened)


def _with_hook(options: Mapping[str, Any] | Sequence[str] | None, hook: str | Sequence[str]) -> Mapping[str, Any] | list[str]:
    """``options`` with the source's ``hook`` option set to ``hook`` (a list joined by commas)."""
    value = hook if isinstance(hook, str) else ",".join(str(h) for h in hook)
    if options is None or isinstance(options, Mapping):
        if options and "hook" in options:
            raise OptionError("give the hook once: either hook=... or the source option hook, not both")
        return {**(options or {}), "hook": value}
    if any(str(o).split("=", 1)[0].strip() == "hook" for o in options):
        raise OptionError("give the hook once: either hook=... or the source option hook, not both")
    return [*options, f"hook={value}"]


def train(
    trainer: str | None = None,
    options: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    store: str | os.PathLike | ActivationStore | None = None,
    out: str | os.PathLike | None = None,
    source: str | ActivationSource | None = None,
    source_options: Mapping[str, Any] | Sequence[str] | None = None,
    config: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    batch_size: int = 4096,
    rows: int | None = None,
    epochs: float = 1.0,
    lr: float | None = None,
    lr_search_fraction: float = 0.0,
    lr_search_factors: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0),
    warmup_steps: int = 1000,
    decay_fraction: float = 0.2,
    adam_betas: tuple[float, ...] = (0.9, 0.999),
    grad_clip: float | None = None,
    seed: int | str | Sequence[int] = 0,
    dtype: Literal["float32", "bfloat16"] = "float32",
    threads: int | None = None,
    device: str = "auto",
    normalise: bool = True,
    holdout_rows: int | None = None,
    log_every: int = 50,
    checkpoint_every: int = 2_000_000,
    dead_after: int | None = None,
    buffer_rows: int | None = None,
    tee: str | None = None,
    data_shards: int | None = None,
    eval_every: int = 0,
    eval_evaluators: list[str] | None = None,
    eval_options: list[str] | None = None,
    site: str | None = None,
    sites: str | Sequence[str] | None = None,
) -> list:
    """Train one dictionary (or one per swept option value) on a store; returns the run folders.

    ``options`` are the trainer's (``{"k": 32}`` or ``["k=32"]``; ``k=16,32`` sweeps). ``store``
    is a path, fsspec URL or opened store; ``out`` the run folder (a sweep's members go in
    subfolders). Instead of a store, ``source`` (a name with ``source_options``, or an instance)
    trains straight from the source through a bounded shuffle buffer (``buffer_rows``), holding out
    its first ``holdout_rows`` rows in a small store in the run folder; the run records the source
    and ``resume`` restarts it at the recorded row. ``resume`` continues a run from its checkpoint; ``overwrite`` replaces an
    existing run. The remaining arguments are the loop's settings (``featureforge train --help``,
    ``-t KEY=VALUE``): rows and epochs to train, batch size, learning rate (default: the
    trainer's for this run, or a race of ``lr_search_factors`` times it over
    ``lr_search_fraction`` of the steps), warm-up steps and final decay fraction, Adam betas, gradient clipping, seed
    (a list, or ``"0,1,2"``, trains one member per initialisation seed on the same batches),
    compute dtype, threads, device, input normalisation, held-out rows, logging, checkpointing and
    dead-latent windows (in rows), the reader's shuffle buffer (a streamed run's window), ``tee`` (a streamed run also writes
    its training rows into this store) and data shards, and evaluation
    during training (every ``eval_every`` steps with ``eval_evaluators``, options as
    ``EVALUATOR.KEY=VALUE``). On a store of several sites, ``site`` picks the one the trainer's
    ``acts`` come from, and ``sites`` (``"all"`` or a list of names) trains one dictionary per site
    in one pass over the data, each in ``out/<site>`` (a sweep folder ``evaluate`` reads whole).

    ``config`` is a run file as for ``featureforge train --config run.toml``: its values fill in
    the trainer, store, out, trainer options and every setting left at its default here.
    """
    from .training._loop import train as _train

    settings = {key: value for key, value in locals().items() if key not in _TRAIN_OWN}
    if settings.get("sites") is not None and not isinstance(settings["sites"], str):
        settings["sites"] = ",".join(str(s) for s in settings["sites"])
    if config is not None:
        trainer, options, store, out, resume, overwrite = _apply_run_file(config, settings, trainer, options, store, out, resume, overwrite)
        if store is None and source is None:  # a run file's `source = "hf"` (its options come from source_options=)
            from .training._run_file import read_run_file

            source = read_run_file(config, flag="config=").top.get("source")
    missing = [flag for flag, value in (("trainer", trainer), ("store", store if source is None else source), ("out", out)) if value is None]
    if missing:
        raise OptionError(f"train needs {' and '.join(missing)}; pass {', '.join(f'{m}=...' for m in missing)} or a run file with config=...")
    return _train(trainer, options, store=store, out=out, resume=resume, overwrite=overwrite, progress=progress,
                  storage_options=storage_options, source=source, source_options=source_options, **settings)


# Arguments of ``train`` that are not loop settings (TrainConfig fields).
_TRAIN_OWN = frozenset({"trainer", "options", "store", "out", "source", "source_options", "config", "resume", "overwrite", "progress", "storage_options", "_train"})


def _apply_run_file(config: str | os.PathLike, settings: dict[str, Any], trainer: Any, options: Any, store: Any, out: Any,
                    resume: bool, overwrite: bool) -> tuple[Any, Any, Any, Any, bool, bool]:
    """Fill in from a run file what the caller left unset (``settings`` in place); the caller's values win."""
    import inspect

    from .options import split_pairs
    from .training._run_file import read_run_file

    parsed = read_run_file(config, flag="config=")
    defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
    for key, value in {**parsed.train_options, **parsed.top}.items():
        if key in settings and settings[key] == defaults[key]:
            settings[key] = value
        elif key not in settings and key not in _TRAIN_OWN:
            raise OptionError(f"config={config}: unknown loop setting {key!r}; see featureforge train --help")
    given = dict(split_pairs(options, "k=32")) if isinstance(options, (list, tuple)) else dict(options or {})
    top = parsed.top
    return (trainer if trainer is not None else top.get("trainer"), {**parsed.options, **given},
            store if store is not None else top.get("store"), out if out is not None else top.get("out"),
            resume or bool(top.get("resume", False)), overwrite or bool(top.get("overwrite", False)))


def steer(run: Any = None, **kwargs: Any) -> Any:
    """Steer the live model with latents of a run or steering vectors; see :func:`featureforge.steering.steer`."""
    from .steering import steer as _steer

    return _steer(run, **kwargs)


def steered(run: Any = None, **kwargs: Any) -> Any:
    """Context manager: the live model patched only inside the block; see :func:`featureforge.steering.steered`."""
    from .steering import steered as _steered

    return _steered(run, **kwargs)


def vector(source: str | ActivationSource, options: Mapping[str, Any] | Sequence[str] | None = None, **kwargs: Any) -> Any:
    """A steering vector from a positive and a negative prompt set; see :func:`featureforge.vectors.make_vector`."""
    from .vectors import make_vector

    return make_vector(source, options, **kwargs)


def decompose(vector: Any, run: Any, **kwargs: Any) -> Any:
    """A steering vector in a dictionary's latents; see :func:`featureforge.decomposition.decompose`."""
    from .decomposition import decompose as _decompose

    return _decompose(vector, run, **kwargs)


def load(run: str | os.PathLike) -> Any:
    """Rebuild a trained dictionary from its run folder."""
    from .dictionary import load as _load

    return _load(run)


def export(run: str | os.PathLike, format: str, out: str | os.PathLike) -> Any:
    """Write a run's dictionary in another library's layout (one of its trainer's ``formats``)."""
    from pathlib import Path

    from .dictionary import load as _load
    from .run import RunConfig

    cfg = RunConfig.read(run)
    trainer_cls = get_registry().get("trainer", cfg.trainer)
    if format not in trainer_cls.formats:
        known = ", ".join(trainer_cls.formats) or "none"
        raise OptionError(f"trainer {cfg.trainer!r} cannot export to {format!r}; it supports: {known}")
    dictionary = _load(run)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return trainer_cls(cfg.options).export(dictionary, format, out_dir)


def import_run(src: str | os.PathLike, format: str, out: str | os.PathLike, *, overwrite: bool = False) -> Any:
    """Turn another library's saved dictionary into a featureforge run folder.

    An existing ``out`` is refused unless ``overwrite`` (then only a featureforge run is replaced).
    """
    from pathlib import Path

    from .errors import BadInputError
    from .run import STATUS_COMPLETE, RunConfig, prepare_out_dir

    src_dir = Path(src)
    if not src_dir.is_dir():
        raise BadInputError(f"{src} is not a folder; pass the folder holding cfg.json and the weights")
    prepare_out_dir(out, overwrite=overwrite, delete=False, resumable=False)
    registry = get_registry()
    for name in registry.names("trainer"):
        cls = registry.get("trainer", name)
        if format not in cls.formats:
            continue
        found = cls.import_dictionary(src_dir, format)
        if found is None:
            continue
        options, dictionary = found
        reg = registry.registration("trainer", name)
        config = RunConfig(
            trainer=name,
            trainer_distribution=reg.distribution,
            trainer_version=reg.version,
            options=options,
            d_in=dictionary.d_in,
            d_dict=dictionary.d_dict,
            normalisation={"scale": float(dictionary.input_scale), "applied": False},
            imported_from={"path": str(src_dir.absolute()), "format": format},
            status=STATUS_COMPLETE,
        )
        prepare_out_dir(out, overwrite=overwrite, resumable=False)  # only now that the source was read
        return dictionary.save(out, config)
    raise BadInputError(f"no installed trainer recognises {src} as a {format!r} dictionary; check --format or install the plugin that wrote it")
