"""The generic training loop: any registered trainer, any store, one process or many (DDP).

The loop owns what every method shares: the shuffled out-of-core data stream (held-out chunks
excluded), normalisation, Adam with warm-up and decay, bf16 autocast with fp32 master weights,
dead-latent bookkeeping, metrics.jsonl, atomic checkpoints and bit-exact ``--resume``, progress,
plots, and sweeps (several dictionaries fed from one pass over the data). Trainers only build a
dictionary and say what its loss is.

DDP: under ``torchrun`` each process reads its own shards of the chunks, gradients are
all-reduced (averaged), so a step sees the concatenation of every rank's local batch. The data is
cut into ``data_shards`` shards (default: the world size); a single process can replay a W-rank run
exactly by reading all W shards itself (``--data-shards W``): the loss is computed per shard and
the gradients averaged, as DDP does, so losses that use batch statistics (TopK's FVU normaliser,
AuxK) replay exactly too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ._checkpoint import load_checkpoint, restore_training_state, save_training_state
from ..dictionary import Dictionary
from ..errors import BadInputError, FeatureforgeError, OptionError
from ..store._holdout import split_chunks
from ._lr_search import Candidate, probe_steps, record, scored, winner
from ..options import options_to_dict
from ..plots import plot_training
from ..plugins import get_registry
from ..store._reader import ShuffledReader
from ..roles import ActivationSource, DictionaryTrainer, StepOutput, TrainState
from ..runtime import resolve_device
from ..run import CONFIG_FILE, HELDOUT_STORE, METRICS_FILE, STATUS_COMPLETE, RunConfig, is_complete, prepare_out_dir, store_identity
from ..store._view import ActivationStore, ChunkRef, open_store
from ._schedule import dead_after_for, lr_at
from ._settings import TrainConfig, check_trainer_class, resolve_config
from ._step import apply_update, mark_fired
from ._stream import HeldOutSlice, StreamedReader, StreamPlan, check_stream_resume, plan_stream
from ._sweep import expand_seeds, expand_sweep, with_seeds
from ._sites import MemberSites, column_scales, member_specs
from ._during import eval_instances, evaluate_members

__all__ = ["METRICS_FILE", "TrainConfig", "check_gradient_store", "expand_sweep", "is_complete", "lr_at", "train"]

INIT_SAMPLE_ROWS = 16384


@dataclasses.dataclass
class Member:
    """One dictionary being trained (several in a sweep)."""

    label: str
    run_dir: Path
    trainer: DictionaryTrainer
    dictionary: Dictionary
    optimizer: torch.optim.Optimizer
    state: TrainState
    base_lr: float
    #: Sums of the logged metrics since the last log line: float64 tensors on the device (floats after
    #: a checkpoint or resume), reduced to floats only when a line is written, so a step never waits for
    #: the device just to do bookkeeping.
    window: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Index of the sweep variant this member trains (several candidates share one during an lr race).
    variant: int = 0
    #: Its entry in the learning-rate race, while one is running.
    candidate: Candidate | None = None
    #: The store sites filling each batch role (see ``_sites.MemberSites``).
    sites: Any = None


# -- helpers ----------------------------------------------------------------------------------------
def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _shard_batches(reader: Any, where: str) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        produced = False
        for batch in reader:
            produced = True
            yield batch
        if not produced:
            raise BadInputError(
                f"{where}: a data shard has fewer training rows than its batch ({reader.batch_size}); "
                "use a smaller --batch-size or cache more rows"
            )


def _scalar(value: Any) -> torch.Tensor:
    """A metric as a 0-d float32 tensor (a trainer may report a tensor or a float; a float stays on
    the CPU, where adding it to a device tensor needs no copy)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(())
    return torch.tensor(float(value), dtype=torch.float32)


def _add(window: dict[str, Any], key: str, value: torch.Tensor) -> None:
    """``window[key] += value`` in float64, on the device (no host sync)."""
    value = value.double()
    window[key] = window[key] + value if key in window else value


def _floats(window: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in window.items()}


# -- the loop ---------------------------------------------------------------------------------------
def train(
    trainer: str,
    options: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    store: str | ActivationStore | None = None,
    out: str | os.PathLike,
    source: str | ActivationSource | None = None,
    source_options: Mapping[str, Any] | Sequence[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    **config: Any,
) -> list[Path]:
    """Train one dictionary (or one per swept option value) on a store, or streamed straight from
    ``source`` (no store; see featureforge.training._stream); returns the run folders.

    ``config`` takes the fields of :class:`TrainConfig` (``rows``, ``batch_size``, ``lr``, ...).
    """
    seeds = expand_seeds(config.get("seed"))
    cfg = resolve_config({**config, "seed": seeds[0]} if "seed" in config else config)
    trainer_cls = get_registry().get("trainer", trainer)
    check_trainer_class(trainer_cls, trainer)
    variants, seeds = with_seeds(expand_sweep(trainer_cls.Options, options), seeds)
    trainers = [(label, trainer_cls(opts)) for label, opts in variants]
    if (store is None) == (source is None):
        raise OptionError("train needs either a store (--store) or a source to stream from (--source), not both or neither")
    if source is not None:
        from ..api import make_source

        if not trainer_cls.trains:
            raise OptionError(f"trainer {trainer!r} learns nothing, so there is nothing to stream; cache the source and pass --store")
        run = _Run(trainer, None, None, Path(out), cfg, resume=resume, overwrite=overwrite, progress=progress,
                   source=make_source(source, source_options), pending=(trainer_cls, variants, seeds))
        return run.execute()
    opened = store if isinstance(store, ActivationStore) else open_store(store, storage_options)
    if not trainer_cls.trains:  # nothing to learn (identity): the run folder is written at once
        from ._untrained import write_untrained

        if len(trainers) > 1 or resume:
            raise OptionError(f"trainer {trainer!r} learns nothing, so it has no sweep and no --resume; train it once")
        return write_untrained(trainer, trainers[0][1], opened, Path(out), cfg, overwrite)
    if "grads" in trainer_cls.columns:
        check_gradient_store(opened, trainer)
    trainers = member_specs(trainer_cls, variants, opened, cfg.site, cfg.sites)
    seeds = seeds * (len(trainers) // len(variants))  # member_specs: every variant once per chosen site, in order
    run = _Run(trainer, trainers, opened, Path(out), cfg, resume=resume, overwrite=overwrite, progress=progress, seeds=seeds)
    return run.execute()


GRADS_HOW = ("cache them with a source that writes a grads column (`featureforge plugins` lists each source's options; "
             "the built-in one: `featureforge cache --source synthetic -o downstream=true ...`)")


def check_gradient_store(store: ActivationStore, trainer: str = "this trainer") -> None:
    """Refuse, in one line, a store whose ``grads`` are missing or do not belong to its ``acts``."""
    if "grads" not in store.columns:
        raise BadInputError(f"trainer {trainer!r} needs gradients but store {store.url} has no `grads` column; {GRADS_HOW}")
    acts, grads = store.group["acts"], store.group["grads"]
    if tuple(grads.shape) != tuple(acts.shape):
        raise BadInputError(f"store {store.url}: grads {tuple(grads.shape)} do not match acts {tuple(acts.shape)}; re-cache the gradients with the activations")
    prov = store.provenance
    for key in ("hook", "model", "model_path", "site"):
        other = prov.get(f"grads_{key}")
        if other is not None and prov.get(key) is not None and other != prov.get(key):
            raise BadInputError(f"store {store.url}: grads were taken at {key}={other!r} but acts at {key}={prov.get(key)!r}; "
                                "gradients must be dL/d(acts) at the same site; re-cache both in one `featureforge cache` run")
    if "grads" in prov and prov.get("grads") is None:
        raise BadInputError(f"store {store.url} has a `grads` column but its provenance says no gradients were cached; {GRADS_HOW}")


class _Run:
    def __init__(self, trainer_name: str, trainers: list[tuple[str, DictionaryTrainer, MemberSites]], store: ActivationStore | None, out: Path,
                 cfg: TrainConfig, *, resume: bool, overwrite: bool, progress: bool, seeds: list[int] | None = None,
                 source: ActivationSource | None = None, pending: Any = None):
        self.trainer_name = trainer_name
        self.store = store  # a streamed run's is its held-out store, written in execute()
        self.source = source
        self.plan: StreamPlan | None = None
        #: A streamed run's (trainer class, sweep variants, seeds): its members are made once its
        #: held-out store (which records the source's sites) is written.
        self._pending = pending
        self.out = out
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.show_progress = progress
        self._eval_context: Any = None  # made at the first evaluation during training
        self._cursors: dict[str, Any] = {}  # every shard's reader cursor at the last checkpoint
        self.rank, self.world = _distributed()
        self.shards = cfg.data_shards or self.world
        if self.shards % self.world:
            raise OptionError(f"--data-shards {self.shards} must be a multiple of the world size {self.world}")
        if cfg.batch_size % self.shards:
            raise OptionError(f"--batch-size {cfg.batch_size} must be divisible by the number of data shards ({self.shards})")
        self.device = resolve_device(cfg.device)
        if trainers is not None:
            self._set_members(trainers, seeds)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    def _set_members(self, trainers: list[tuple[str, DictionaryTrainer, MemberSites]], seeds: list[int] | None) -> None:
        self.trainers = trainers
        #: Initialisation seed of each member (``--seed 0,1,2``; the data order is ``cfg.seed``'s).
        self.seeds = seeds or [self.cfg.seed] * len(trainers)
        # Store columns every member reads: its roles' site columns, then the trainer's other columns
        # (trainers declare `columns` and `sites_for`; see roles.DictionaryTrainer).
        self.columns = tuple(dict.fromkeys(c for _, _, ms in trainers for c in ms.store_columns()))
        self.scales = column_scales(self.store, self.columns, self.cfg.normalise)

    # -- set-up ------------------------------------------------------------------------------
    def _run_dirs(self) -> list[Path]:
        if len(self.trainers) == 1 and self.cfg.sites is None:  # --sites: always OUT/<site>, a folder evaluate reads whole
            return [self.out]
        return [self.out / label for label, _, _ in self.trainers]

    def _config_for(self, label: str, trainer: DictionaryTrainer, d_dict: int, holdout: list[int], sites: MemberSites) -> RunConfig:
        reg = get_registry().registration("trainer", self.trainer_name)
        stream = None
        if self.plan is not None:
            stream = {**self.plan.record(), "heldout_store": str(self._heldout_path().relative_to(self.out) if len(self.trainers) == 1
                                                                 and self.cfg.sites is None else Path("..") / HELDOUT_STORE)}
        scale = sites.input_scale(self.scales)
        normalisation = {"scale": scale, "applied": self.cfg.normalise}
        if sites.recorded():
            normalisation["sites"] = sites.site_scales(self.scales)
        return RunConfig(
            stream=stream,
            trainer=self.trainer_name,
            trainer_distribution=reg.distribution,
            trainer_version=reg.version,
            options=trainer.options_dict(),
            sweep_label=label,
            d_in=sites.d_in,
            d_dict=d_dict,
            normalisation=normalisation,
            training=options_to_dict(self.cfg),
            world_size=self.world,
            store=sites.store_identity(store_identity(self.store)),
            sites=sites.recorded(),
            role_widths=sites.widths() if sites.recorded() else None,
            role_scales=sites.scales(self.scales) if sites.recorded() else None,
            holdout={"chunks": holdout, "rows": sum(self.store.chunk_rows(i) for i in holdout)},
        )

    def _check_out_dir(self) -> None:
        prepare_out_dir(self.out, resume=self.resume, overwrite=self.overwrite, delete=self.rank == 0)

    def _keep_old_dead_after(self) -> None:
        """A run saved before trainers chose the dead-latent horizon (no ``dead_after_rows`` in its
        config.json) recorded the loop's old default, 10M rows, as ``training.dead_after``: resume
        it with that horizon rather than refuse it as "other settings"."""
        if self.cfg.dead_after is not None:
            return
        config_file = self._run_dirs()[0] / CONFIG_FILE
        if not config_file.exists():
            return
        old = RunConfig.read(config_file.parent)
        recorded = (old.training or {}).get("dead_after")
        if recorded is not None and "dead_after_rows" not in old.extra:
            self.cfg = dataclasses.replace(self.cfg, dead_after=int(recorded))

    def _check_resumable(self, configs: list[RunConfig]) -> None:
        ignore = {"threads", "log_every", "checkpoint_every", "device", "eval_every", "eval_evaluators", "eval_options"}
        for run_dir, new in zip(self._run_dirs(), configs):
            if not (run_dir / CONFIG_FILE).exists():
                continue
            diffs = RunConfig.read(run_dir).resume_differences(new, ignore)
            if diffs:
                raise FeatureforgeError(
                    f"cannot --resume {run_dir}: it was trained with other settings ({'; '.join(diffs[:4])}); "
                    "resume with the original ones or pass --overwrite"
                )

    def _readers(self, chunks: list | None) -> list[Any]:
        local = self.cfg.batch_size // self.shards
        if self.plan is not None:
            return [StreamedReader(self.plan, self.source, local, columns=self.columns, keys=self._stream_keys(), seed=self.cfg.seed, rank=shard,
                                   world_size=self.shards) for shard in range(self.rank, self.shards, self.world)]
        return [
            ShuffledReader(self.store, batch_size=local, chunks=chunks, seed=self.cfg.seed, rank=shard, world_size=self.shards,
                           drop_last=True, buffer_rows=self.cfg.buffer_rows, columns=self.columns)
            for shard in range(self.rank, self.shards, self.world)
        ]

    def _init_sample(self, chunks: list | None) -> dict[str, torch.Tensor]:
        """A sample of training rows, every column the members read, in training units."""
        columns = [c for c in self.columns if self.store.width(c) is not None and c != "grads"]
        if self.plan is not None:  # the first rows of shard 0's training stream
            n = min(INIT_SAMPLE_ROWS, self.plan.shard_train_rows(0) or INIT_SAMPLE_ROWS, self._shard_rows)
            reader: Any = StreamedReader(self.plan, self.source, n, seed=self.cfg.seed + 1, world_size=self.shards, buffer_rows=n,
                                         columns=columns, keys=self._stream_keys())
        else:
            n = min(INIT_SAMPLE_ROWS, sum(c.rows for c in chunks))
            reader = ShuffledReader(self.store, batch_size=n, chunks=chunks, seed=self.cfg.seed + 1, buffer_rows=self.cfg.buffer_rows,
                                    columns=columns)
        it = iter(reader)
        try:
            batch = next(it, None)
            if batch is None:
                raise BadInputError(f"{self._where()} has fewer than {n} training rows for the dictionary's initialisation; stream more rows")
        finally:
            it.close()
        return {c: batch[c].float().to(self.device) * self.scales[c] for c in columns}

    def _build_members(self, sample: dict[str, torch.Tensor], holdout: list[int], total_steps: int,
                       race: bool) -> tuple[list[Member], list[RunConfig]]:
        """One member per sweep variant, or (``race``) one per candidate learning rate of each variant,
        every candidate from the same initialisation (see featureforge.training._lr_search)."""
        members, configs = [], []
        factors = self.cfg.lr_search_factors if race else (None,)
        for variant, ((label, trainer, sites), run_dir) in enumerate(zip(self.trainers, self._run_dirs())):
            trainer.role_widths, trainer.role_scales = sites.widths(), sites.scales(self.scales)
            scale = sites.input_scale(self.scales)
            for factor in factors:
                torch.manual_seed(self.seeds[variant])
                dictionary = trainer.build(sites.d_in)
                if not isinstance(dictionary, Dictionary):
                    raise FeatureforgeError(f"trainer {self.trainer_name!r} built a {type(dictionary).__name__}, not a featureforge Dictionary")
                dictionary.to(self.device)
                dictionary.input_scale.fill_(scale)
                with torch.no_grad():
                    trainer.initialize(dictionary, sites.sample(sample))
                base_lr = self.cfg.lr if self.cfg.lr is not None else float(trainer.learning_rate(dictionary, total_steps)) * (factor or 1.0)
                params = [p for p in dictionary.parameters() if p.requires_grad]
                # fused Adam: never slower than foreach here, up to 4x faster on busy cores (measured in featureforge-sae)
                optimizer = torch.optim.Adam(params, lr=base_lr, betas=tuple(self.cfg.adam_betas)[:2], fused=True)
                horizon = dead_after_for(trainer, dictionary, self.cfg)
                state = TrainState(step=0, rows_seen=0, rows_since_fired=torch.zeros(dictionary.d_dict, dtype=torch.long, device=self.device),
                                   world_size=self.world, dead_after=horizon)
                members.append(Member(label, run_dir, trainer, dictionary, optimizer, state, base_lr, variant=variant,
                                      candidate=Candidate(base_lr) if race else None, sites=sites))
            configs.append(self._config_for(label, trainer, dictionary.d_dict, holdout, sites))
            configs[-1].training["seed"] = self.seeds[variant]
            configs[-1].extra["dead_after_rows"] = horizon  # the horizon this run used, whoever set it
        torch.manual_seed(self.cfg.seed)  # the step RNG starts from a known state whatever was built
        return members, configs

    def _end_race(self, members: list[Member], configs: list[RunConfig], steps: int, bar: Any) -> list[Member]:
        """Keep each variant's candidate with the lowest probe FVU (the same on every rank); drop the rest."""
        sums = torch.tensor([[m.candidate.num, m.candidate.den] for m in members], dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        for m, (num, den) in zip(members, sums.tolist()):
            m.candidate.num, m.candidate.den = num, den
        kept = []
        for variant, config in enumerate(configs):
            group = [m for m in members if m.variant == variant]
            best = winner([m.candidate for m in group])
            config.lr_search = record([m.candidate for m in group], best, steps, self.cfg.batch_size)
            kept.append(group[best])
            if self.rank == 0:
                config.write(group[best].run_dir)
                if self.show_progress:
                    tried = ", ".join(f"{m.candidate.lr:.2g}: {m.candidate.fvu:.3f}" for m in group)
                    bar.write(f"{config.sweep_label or 'lr'}: chose lr {group[best].base_lr:.3g} after {steps} steps (probe fvu {tried})")
        for m in kept:
            m.candidate = None
        return kept

    # -- checkpoint --------------------------------------------------------------------------
    def _checkpoint(self, members: list[Member], readers: list[ShuffledReader], step: int, rows: int, metric_offsets: list[int]) -> None:
        cursors = {str(r.rank): r.state_dict() for r in readers}
        if self.world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, cursors)
            cursors = {k: v for part in gathered for k, v in part.items()}
        self._cursors = cursors
        for m in members:
            m.window = _floats(m.window)  # the checkpoint's JSON holds floats
        if self.rank != 0:
            return
        for m in members:
            m.dictionary.save(m.run_dir)
        save_training_state(self.out, members, cursors, step, rows, metric_offsets)

    # -- main --------------------------------------------------------------------------------
    def execute(self) -> list[Path]:
        from ..progress import progress_bar

        self._check_out_dir()
        has_checkpoint = self.resume and load_checkpoint(self.out) is not None
        if self.source is not None:
            train_chunks, held = None, self._open_stream(has_checkpoint)
            total_steps = self._total_steps(self.plan.train_rows)
            self._shard_rows = total_steps * self.cfg.batch_size // self.shards  # rows each shard trains on
        else:
            train_chunks, held = split_chunks(self.store, self.cfg.holdout_rows)
            total_steps = self._total_steps(sum(c.rows for c in train_chunks))
        if self.resume:
            self._keep_old_dead_after()
        race_steps = 0
        if self.cfg.lr is None and not has_checkpoint:
            race_steps = probe_steps(total_steps, self.cfg.lr_search_fraction, len(self.cfg.lr_search_factors))
        members, configs = self._build_members(self._init_sample(train_chunks), [c.index for c in held], total_steps, race_steps > 0)
        if self.resume:
            self._check_resumable(configs)
            if all(is_complete(d) for d in self._run_dirs()):
                return self._run_dirs()
        readers = self._readers(train_chunks)
        step, rows_seen = restore_training_state(self.out, members, readers, self.rank == 0) if self.resume else (0, 0)
        self._cursors = {str(r.rank): r.state_dict() for r in readers}
        if self.rank == 0:
            for m in members:
                configs[m.variant].write(m.run_dir)
                m.dictionary.config = configs[m.variant].to_dict()
        evaluators = eval_instances(self.cfg, self.store) if self.cfg.eval_every > 0 else []
        tee = self._start_tee(readers, total_steps)
        streams = [_shard_batches(r, self._where()) for r in readers]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.dtype == "bfloat16" else contextlib.nullcontext()
        metric_files = [open(d / METRICS_FILE, "a") if self.rank == 0 else None for d in self._run_dirs()]
        next_checkpoint = (rows_seen // self.cfg.checkpoint_every + 1) * self.cfg.checkpoint_every
        label = f"train {self.trainer_name}" + (f" ({len(self.trainers)} sites)" if self.cfg.sites is not None else "")
        bar = progress_bar(total_steps * self.cfg.batch_size, label, initial=rows_seen,
                           enabled=None if (self.show_progress and self.rank == 0) else False)
        window_start = time.perf_counter()
        window_rows = 0
        try:
            while step < total_steps:
                parts = [self._to_device(next(s)) for s in streams]
                dens: dict[Any, Any] = {}  # each batch's FVU denominator per reference, computed once for all members
                for m in members:
                    m.optimizer.param_groups[0]["lr"] = lr_at(step, total_steps, m.base_lr, self.cfg)
                    m.state.step, m.state.rows_seen = step, rows_seen
                    num, den = self._step(m, [m.sites.batch(part) for part in parts], autocast, step, rows_seen, dens)
                    if m.candidate is not None and scored(step, race_steps):
                        m.candidate.num += float(num)
                        m.candidate.den += float(den)
                step += 1
                if step == race_steps:
                    members = self._end_race(members, configs, race_steps, bar)
                racing = step < race_steps  # no log, evaluation or checkpoint mixes the candidates
                rows_seen += self.cfg.batch_size
                window_rows += self.cfg.batch_size
                bar.update(self.cfg.batch_size)
                last = step == total_steps
                if racing:
                    bar.set_postfix(lr="choosing", refresh=False)
                    continue
                if step % self.cfg.log_every == 0 or last:
                    lines = self._log(members, metric_files, step, rows_seen, window_rows / max(time.perf_counter() - window_start, 1e-9))
                    bar.set_postfix({**self._postfix(members, lines), **self._stream_postfix(readers, lines)}, refresh=False)
                    window_start, window_rows = time.perf_counter(), 0
                if evaluators and (step % self.cfg.eval_every == 0 or last):
                    paused = time.perf_counter()
                    desc = "" if bar.disable else bar.desc  # a disabled tqdm has no desc
                    self._evaluate(members, configs, evaluators, metric_files, step, rows_seen,
                                   announce=lambda msg: (bar.set_description_str(f"{desc} ({msg})", refresh=True)))
                    bar.set_description_str(desc, refresh=False)
                    window_start += time.perf_counter() - paused  # evaluation time is not training throughput
                if rows_seen >= next_checkpoint or last:
                    self._checkpoint(members, readers, step, rows_seen, [f.tell() if f is not None else 0 for f in metric_files])
                    next_checkpoint = (rows_seen // self.cfg.checkpoint_every + 1) * self.cfg.checkpoint_every
        except BaseException:
            if tee is not None:
                tee.abort()
            raise
        finally:
            bar.close()
            for s in streams:
                s.close()
            for f in metric_files:
                if f is not None:
                    f.close()
        if tee is not None:
            tee.finish()
        if self.rank == 0:
            self._finish(members, configs, step, rows_seen)
        return self._run_dirs()

    def _total_steps(self, train_rows: int | None) -> int:
        if self.cfg.rows is None and train_rows is None:
            raise BadInputError(f"source {self.plan.source!r} is unbounded; say how many rows to train on with --rows N")
        total_rows = self.cfg.rows if self.cfg.rows is not None else int(self.cfg.epochs * train_rows)
        total_steps = total_rows // self.cfg.batch_size
        if total_steps <= 0:
            raise BadInputError(f"{total_rows} training rows make no step of --batch-size {self.cfg.batch_size}; train on more rows or use a smaller batch")
        return total_steps

    def _log(self, members: list[Member], metric_files: list[Any], step: int, rows_seen: int, rows_per_s: float) -> list[dict[str, Any]]:
        """One metrics.jsonl line per member (every rank reduces; rank 0 writes); returns them."""
        lines = []
        for m, f in zip(members, metric_files):
            line = self._log_line(m, step, rows_seen, rows_per_s)
            if f is not None:
                f.write(json.dumps(line) + "\n")
                f.flush()
            lines.append(line)
        return lines

    # -- streaming -------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"source {self.plan.source!r}" if self.plan is not None else f"store {self.store.url}"

    def _heldout_path(self) -> Path:
        return self.out / HELDOUT_STORE

    def _open_stream(self, has_checkpoint: bool) -> list[ChunkRef]:
        """Plan a streamed run and write (or reopen) its held-out store; returns its chunks, all held out."""
        src = self.source
        if has_checkpoint and not src.seekable:
            raise BadInputError(f"source {src.name!r} cannot restart at a row (it does not seek), so its streamed run {self.out} "
                                "cannot --resume; start again with --overwrite, or cache it first and train on the store")
        self.plan = plan_stream(src, self.cfg, self.shards)
        if self.resume:  # before the held-out store is touched
            check_stream_resume(self.plan, self.out)
        path = self._heldout_path()
        if self.rank == 0:
            from ..api import cache

            self.store = cache(HeldOutSlice(src, self.plan), store=str(path), rows=self.plan.heldout_rows, write_shuffle_rows=0,
                               rank=0, world_size=1, progress=self.show_progress)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            if self.rank != 0:
                self.store = open_store(str(path))
        trainer_cls, variants, seeds = self._pending
        if "grads" in trainer_cls.columns:
            check_gradient_store(self.store, self.trainer_name)
        members = member_specs(trainer_cls, variants, self.store, self.cfg.site, self.cfg.sites)
        self._set_members(members, seeds * (len(members) // len(variants)))
        return self.store.committed_chunks()

    def _stream_keys(self) -> dict[str, str]:
        """Each store column's key in the source's batches: a site after the first is under its name."""
        return {r["column"]: ("acts" if i == 0 else r["name"]) for i, r in enumerate(self.store.site_records)}

    def _start_tee(self, readers: list[Any], total_steps: int) -> Any:
        """``--tee``: start writing the streamed training rows into a store (None without it)."""
        if self.cfg.tee is None:
            return None
        if self.plan is None:
            raise OptionError("--tee writes what a streamed run streams; train with --source instead of --store, or leave out --tee")
        from ._tee import Tee

        rows = total_steps * self.cfg.batch_size
        if self.plan.train_rows is not None:
            rows = min(rows, self.plan.train_rows)
        tee = Tee(self.source, self.plan, self.cfg.tee, rows)
        reader = readers[0]
        reader.tee = tee.source
        tee.start(reader.row, reader.window_rows, reader.epoch)
        return tee

    def _stream_postfix(self, readers: list[Any], lines: list[dict[str, Any]]) -> dict[str, str]:
        """A streamed run's bar also shows the source's and the trainer's rows/s and the buffer's fill."""
        if self.plan is None:
            return {}
        stats = [r.progress() for r in readers]
        return {"src/s": f"{sum(s['source_rows_per_s'] for s in stats) * self.world:,.0f}",
                "train/s": f"{lines[0]['rows_per_s']:,.0f}" if lines else "",
                "buf": f"{sum(s['buffer_fill'] for s in stats) / len(stats):.0%}"}

    @staticmethod
    def _postfix(members: list[Member], lines: list[dict[str, Any]]) -> dict[str, str]:
        """The bar's figures: FVU and L0 of a single run, every member's FVU in a sweep."""
        if len(lines) == 1:
            return {"fvu": f"{lines[0]['fvu']:.4f}", "l0": f"{lines[0].get('l0', 0):.1f}"}
        return {f"fvu[{m.label}]": f"{line['fvu']:.3f}" for m, line in zip(members, lines)}

    def _finish(self, members: list[Member], configs: list[RunConfig], step: int, rows_seen: int) -> None:
        """Final weights, then plots, then status "complete": a kill before the last write leaves a run --resume finishes."""
        last_doc = max((int(c.get("last_doc_id", -1)) for c in self._cursors.values()), default=-1)
        for m, config in zip(members, configs):
            config.training_result = {"steps": step, "rows": rows_seen}
            if config.stream is not None and last_doc >= 0:  # held-out text for a live model starts after it
                config.stream = {**config.stream, "next_doc_id": last_doc + 1}
            m.dictionary.save(m.run_dir, config)
            plot_training(m.run_dir)
            config.status = STATUS_COMPLETE
            config.write(m.run_dir)

    def _evaluate(self, members: list[Member], configs: list[RunConfig], evaluators: list[Any], metric_files: list[Any],
                  step: int, rows_seen: int, announce: Any = None) -> None:
        """Run the evaluators on a copy of each member's current dictionary; log one metrics line each.

        Rank 0 only (the others wait at a barrier). The RNG states are restored afterwards and the
        dictionary evaluated is a copy, so the training stream is exactly the one without evaluation.
        """
        if self.rank == 0:
            if self._eval_context is None:  # one context per run: a live model is rebuilt once, not every evaluation
                from ..evaluation._context import EvaluationContext

                self._eval_context = EvaluationContext(self.store, self.out, device=str(self.device), progress=False)
            evaluate_members(members, configs, evaluators, metric_files, self._eval_context, step, rows_seen, announce)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _to_device(self, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One data shard's store columns on the device, activation columns in training units (each
        site's rows times its own scale; ``grads`` divided by the first site's: dL/d(s*x) = (dL/dx)/s)."""
        batch = {}
        for column in self.columns:
            value = part[column].to(self.device, non_blocking=True)
            if self.store.width(column) is not None:
                value = value.float()
                scale = self.scales[column]
                if scale != 1.0:
                    value.div_(scale) if column == "grads" else value.mul_(scale)
            batch[column] = value
        return batch

    def _step(self, m: Member, batches: list[dict[str, torch.Tensor]], autocast: Any, step: int, rows_seen: int,
              dens: dict[Any, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step over this process's data shards: per-shard losses, averaged gradients.

        Returns the FVU numerator and denominator of the batch as it was reconstructed before the step
        (float64 tensors on the device: ``float()`` them only when needed, e.g. during an lr race).
        ``dens`` caches each batch's denominator across the members of a sweep.
        """
        outs: list[StepOutput] = []
        for batch in batches:
            with autocast:
                out: StepOutput = m.trainer.loss(m.dictionary, batch, m.state)
            loss = out.loss
            if not bool(torch.isfinite(loss.detach()).all()):
                last = load_checkpoint(self.out)
                kept = f"the last good checkpoint (step {last[1]['step']}) is kept in {self.out / 'checkpoint'}" if last else "no checkpoint was written yet"
                raise FeatureforgeError(
                    f"loss became {float(loss.detach())} at step {step} (row {rows_seen}){f' for {m.label}' if m.label else ''}; "
                    f"training stopped and {kept}; lower --lr or check the store for extreme rows"
                )
            (loss / len(batches) if len(batches) > 1 else loss).backward()
            outs.append(out)
        if self.world > 1:
            self._all_reduce_grads(m)
        if self.cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_([p for p in m.dictionary.parameters() if p.grad is not None], self.cfg.grad_clip)
            _add(m.window, "grad_norm", norm.detach())  # before clipping, logged as a mean
        apply_update(m.trainer, m.dictionary, m.optimizer, m.state)
        mark_fired(m.state, [out.active for out in outs], self.cfg.batch_size)
        num_before, den_before = m.window.get("fvu_num", 0.0), m.window.get("fvu_den", 0.0)
        dens = dens if dens is not None else {}
        with torch.no_grad():
            for i, (batch, out) in enumerate(zip(batches, outs)):
                x = batch[m.sites.reference]  # what x_hat estimates: acts, or the target / stacked sites
                x_hat = out.x_hat.detach().float()
                key = (i, m.sites.reference_key)
                if key not in dens:
                    dens[key] = (x - x.mean(0)).pow(2).sum()
                # FVU sums add up over shards (as over ranks); the other scalars are averaged.
                acc = {"fvu_num": (x - x_hat).pow(2).sum(), "fvu_den": dens[key], "loss": out.loss.detach().float() / len(outs)}
                if out.l0 is not None:
                    acc["l0"] = _scalar(out.l0) / len(outs)
                for key, value in out.metrics.items():
                    acc[key] = _scalar(value) / len(outs)
                for key, value in acc.items():
                    _add(m.window, key, value)
            m.window["_steps"] = m.window.get("_steps", 0.0) + 1
        return m.window["fvu_num"] - num_before, m.window["fvu_den"] - den_before

    def _all_reduce_grads(self, m: Member) -> None:
        import torch.distributed as dist

        grads = [p.grad for p in m.dictionary.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def _log_line(self, m: Member, step: int, rows: int, rows_per_s: float) -> dict[str, Any]:
        window = _floats(m.window)
        m.window = {}
        if self.world > 1:
            import torch.distributed as dist

            keys = sorted(window)
            values = torch.tensor([window[k] for k in keys], dtype=torch.float64)
            dist.all_reduce(values)
            window = {k: float(v) / (self.world if k != "fvu_num" and k != "fvu_den" else 1) for k, v in zip(keys, values)}
        steps = max(window.pop("_steps", 1.0), 1.0)
        num, den = window.pop("fvu_num", 0.0), window.pop("fvu_den", 0.0)
        # The member's horizon: a trainer with its own (AuxK) defines dead the same way in the log.
        dead = float((m.state.rows_since_fired >= m.state.dead_after).float().mean())
        line = {"step": step, "rows": rows, "lr": m.optimizer.param_groups[0]["lr"], "fvu": num / den if den else float("nan")}
        line.update({k: v / steps for k, v in window.items()})
        line["dead_fraction"] = dead
        line["rows_per_s"] = rows_per_s
        return line
