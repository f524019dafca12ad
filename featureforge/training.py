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
import itertools
import json
import math
import os
import time
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch

from .checkpoint import load_checkpoint, load_optimizer, optimizer_tensors, restore_rng, rng_tensors, save_checkpoint
from .dictionary import Dictionary
from .errors import BadInputError, FeatureforgeError, OptionError
from .holdout import split_chunks
from .options import options_to_dict, parse_options
from .plugins import get_registry
from .reader import ShuffledReader
from .roles import DictionaryTrainer, StepOutput, TrainState
from .run import CONFIG_FILE, METRICS_FILE, STATUS_COMPLETE, RunConfig, is_complete, prepare_out_dir, store_identity
from .store import ActivationStore, open_store

INIT_SAMPLE_ROWS = 16384


@dataclasses.dataclass
class TrainConfig:
    """Options of the loop itself (the trainer's options are separate)."""

    batch_size: int = 4096
    """Rows per optimiser step, summed over DDP ranks."""
    rows: int | None = None
    """Training rows in total; default: `epochs` passes over the training chunks."""
    epochs: float = 1.0
    """Passes over the training chunks when `rows` is not given."""
    lr: float | None = None
    """Adam learning rate; default: the trainer's suggestion for this dictionary size."""
    warmup_steps: int = 1000
    """Linear learning-rate warm-up from 0 (capped at 10% of the steps)."""
    decay_fraction: float = 0.2
    """Final fraction of steps over which the learning rate decays linearly to 0 (0: constant)."""
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    """Adam's beta1, beta2."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this before each Adam step (SAELens clips at 1.0); none: no clipping."""
    seed: int = 0
    """Seeds initialisation and the data order."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype: bfloat16 runs the step under autocast with fp32 master weights."""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    normalise: bool = True
    """Scale rows by the store's normalisation so their mean squared norm is d_in."""
    holdout_rows: int | None = None
    """Rows held out for evaluation (whole chunks; default 5% up to 65536; 0 for none)."""
    log_every: int = 50
    """Steps between metrics.jsonl lines."""
    checkpoint_every: int = 2_000_000
    """Rows between checkpoints (one is always written at the end)."""
    dead_after: int = 10_000_000
    """Rows without firing after which a latent counts as dead in the log (a trainer's own dead_after wins)."""
    buffer_rows: int | None = None
    """Rows mixed in the reader's shuffle buffer (default: 8 chunks, at least 65536 rows)."""
    data_shards: int | None = None
    """Shards the data is cut into; default: the DDP world size."""
    eval_every: int = 0
    """Steps between evaluations of the current dictionary during training (rank 0; metrics.jsonl lines with keys like downstream/ce_loss_score); 0: never."""
    eval_evaluators: list[str] | None = None
    """Evaluators run every eval_every steps; default: downstream when the store's source can splice a live model, else reconstruction."""
    eval_options: list[str] | None = None
    """Options of those evaluators as EVALUATOR.KEY=VALUE (e.g. downstream.max_sequences=64)."""


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
    window: dict[str, float] = dataclasses.field(default_factory=dict)


# -- sweeps -----------------------------------------------------------------------------------------
def expand_sweep(options_cls: type, options: Mapping[str, Any] | Sequence[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """Split ``k=16,32,64`` (or a list value in the API) on a scalar field into one config per value."""
    if options is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(options, Mapping):
        items = list(options.items())
    else:
        items = []
        for pair in options:
            key, sep, value = pair.partition("=")
            if not sep:
                raise OptionError(f"option {pair!r} is not key=value")
            items.append((key.strip().replace("-", "_"), value))
    hints = typing.get_type_hints(options_cls)
    axes: list[tuple[str, list[Any]]] = []
    for key, value in items:
        tp = hints.get(key)
        is_list_field = tp is not None and (typing.get_origin(tp) in (list, tuple) or tp in (list, tuple))
        if isinstance(value, str) and "," in value and not is_list_field:
            axes.append((key, [v.strip() for v in value.split(",") if v.strip()]))
        elif isinstance(value, (list, tuple)) and not is_list_field:
            axes.append((key, list(value)))
        else:
            axes.append((key, [value]))
    combos = list(itertools.product(*[values for _, values in axes])) or [()]
    swept = [key for key, values in axes if len(values) > 1]
    out = []
    for combo in combos:
        chosen = {key: value for (key, _), value in zip(axes, combo)}
        label = ",".join(f"{key}={chosen[key]}" for key in swept)
        out.append((label, chosen))
    return out


# -- helpers ----------------------------------------------------------------------------------------
def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def lr_at(step: int, total_steps: int, base: float, cfg: TrainConfig) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last ``decay_fraction``."""
    warmup = min(cfg.warmup_steps, max(1, total_steps // 10))
    if step < warmup:
        return base * (step + 1) / warmup
    decay_steps = int(total_steps * cfg.decay_fraction)
    if decay_steps > 0 and step >= total_steps - decay_steps:
        return base * max(0.0, (total_steps - step) / decay_steps)
    return base


def _shard_batches(reader: ShuffledReader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        produced = False
        for batch in reader:
            produced = True
            yield batch
        if not produced:
            raise BadInputError(
                f"store {reader.store.url}: a data shard has fewer training rows than its batch ({reader.batch_size}); "
                "use a smaller --batch-size or cache more rows"
            )


def _scalar(value: Any) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


# -- evaluation during training ---------------------------------------------------------------------
def default_eval_evaluators(store: ActivationStore) -> list[str]:
    """``downstream`` when the store's source can splice a live model and it is installed, else ``reconstruction``."""
    from .roles import ActivationSource

    registry = get_registry()
    name = (store.source or {}).get("name")
    cls = registry.tables()["source"].get(name).cls if name in registry.tables()["source"] else None
    if cls is not None and cls.splice is not ActivationSource.splice and "downstream" in registry.names("evaluator"):
        return ["downstream"]
    return ["reconstruction"]


def _eval_instances(cfg: TrainConfig, store: ActivationStore) -> list[Any]:
    """The evaluators to run during training, with their options (validated before training starts)."""
    names = list(cfg.eval_evaluators) if cfg.eval_evaluators else default_eval_evaluators(store)
    settings: dict[str, list[str]] = {name: [] for name in names}
    for pair in cfg.eval_options or []:
        name, dot, setting = str(pair).partition(".")
        if not dot or "=" not in setting or "=" in name:
            raise OptionError(f"eval_options entry {pair!r} is not EVALUATOR.KEY=VALUE; write e.g. downstream.max_sequences=64")
        if name not in settings:
            raise OptionError(f"eval_options names evaluator {name!r}, which is not among eval_evaluators ({', '.join(names)})")
        settings[name].append(setting)
    registry = get_registry()
    return [registry.get("evaluator", name)(settings[name]) for name in names]


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restore torch (CPU and CUDA), numpy and Python RNG states afterwards: the training stream never sees the detour."""
    import random

    import numpy as np

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


# -- the loop ---------------------------------------------------------------------------------------
def train(
    trainer: str,
    options: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    store: str | ActivationStore,
    out: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    **config: Any,
) -> list[Path]:
    """Train one dictionary (or one per swept option value) on a store; returns the run folders.

    ``config`` takes the fields of :class:`TrainConfig` (``rows``, ``batch_size``, ``lr``, ...).
    """
    cfg = parse_options(TrainConfig, config, owner="train")
    if cfg.batch_size <= 0:
        raise OptionError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.eval_every < 0:
        raise OptionError(f"eval_every must be 0 (no evaluation during training) or a number of steps, got {cfg.eval_every}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise OptionError(f"grad_clip must be a positive gradient norm (e.g. -t grad_clip=1.0) or none, got {cfg.grad_clip}")
    trainer_cls = get_registry().get("trainer", trainer)
    variants = expand_sweep(trainer_cls.Options, options)
    trainers = [(label, trainer_cls(opts)) for label, opts in variants]
    opened = store if isinstance(store, ActivationStore) else open_store(store, storage_options)
    if "grads" in trainer_cls.columns:
        check_gradient_store(opened, trainer)
    run = _Run(trainer, trainers, opened, Path(out), cfg, resume=resume, overwrite=overwrite, progress=progress)
    return run.execute()


GRADS_HOW = ("cache them with a source that writes gradients, e.g. `featureforge cache --source hf -o grads=true ...` "
             "or `featureforge cache --source synthetic -o downstream=true ...`")


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
    def __init__(self, trainer_name: str, trainers: list[tuple[str, DictionaryTrainer]], store: ActivationStore, out: Path,
                 cfg: TrainConfig, *, resume: bool, overwrite: bool, progress: bool):
        self.trainer_name = trainer_name
        self.trainers = trainers
        self.store = store
        self.out = out
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.show_progress = progress
        self.rank, self.world = _distributed()
        self.shards = cfg.data_shards or self.world
        if self.shards % self.world:
            raise OptionError(f"--data-shards {self.shards} must be a multiple of the world size {self.world}")
        if cfg.batch_size % self.shards:
            raise OptionError(f"--batch-size {cfg.batch_size} must be divisible by the number of data shards ({self.shards})")
        self.device = _resolve_device(cfg.device)
        # Columns every trainer asks for, acts first (trainers declare `columns`; see roles.DictionaryTrainer).
        wanted = [c for _, t in trainers for c in getattr(t, "columns", ("acts",))]
        self.columns = tuple(dict.fromkeys(["acts", *wanted]))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    # -- set-up ------------------------------------------------------------------------------
    def _run_dirs(self) -> list[Path]:
        if len(self.trainers) == 1:
            return [self.out]
        return [self.out / label for label, _ in self.trainers]

    def _config_for(self, label: str, trainer: DictionaryTrainer, d_dict: int, holdout: list[int], scale: float) -> RunConfig:
        reg = get_registry().registration("trainer", self.trainer_name)
        return RunConfig(
            trainer=self.trainer_name,
            trainer_distribution=reg.distribution,
            trainer_version=reg.version,
            options=trainer.options_dict(),
            sweep_label=label,
            d_in=self.store.d_in,
            d_dict=d_dict,
            normalisation={"scale": scale, "applied": self.cfg.normalise},
            training=options_to_dict(self.cfg),
            world_size=self.world,
            store=store_identity(self.store),
            holdout={"chunks": holdout, "rows": sum(self.store.chunk_rows(i) for i in holdout)},
        )

    def _check_out_dir(self) -> None:
        prepare_out_dir(self.out, resume=self.resume, overwrite=self.overwrite, delete=self.rank == 0)

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

    def _readers(self, chunks: list) -> list[ShuffledReader]:
        local = self.cfg.batch_size // self.shards
        return [
            ShuffledReader(self.store, batch_size=local, chunks=chunks, seed=self.cfg.seed, rank=shard, world_size=self.shards,
                           drop_last=True, buffer_rows=self.cfg.buffer_rows, columns=self.columns)
            for shard in range(self.rank, self.shards, self.world)
        ]

    def _init_sample(self, chunks: list, scale: float) -> torch.Tensor:
        n = min(INIT_SAMPLE_ROWS, sum(c.rows for c in chunks))
        reader = ShuffledReader(self.store, batch_size=n, chunks=chunks, seed=self.cfg.seed + 1, buffer_rows=self.cfg.buffer_rows)
        it = iter(reader)
        try:
            batch = next(it)
        finally:
            it.close()
        return batch["acts"].float().to(self.device) * scale

    def _build_members(self, scale: float, sample: torch.Tensor, holdout: list[int]) -> tuple[list[Member], list[RunConfig]]:
        members, configs = [], []
        for (label, trainer), run_dir in zip(self.trainers, self._run_dirs()):
            torch.manual_seed(self.cfg.seed)
            dictionary = trainer.build(self.store.d_in)
            if not isinstance(dictionary, Dictionary):
                raise FeatureforgeError(f"trainer {self.trainer_name!r} built a {type(dictionary).__name__}, not a featureforge Dictionary")
            dictionary.to(self.device)
            dictionary.input_scale.fill_(scale)
            with torch.no_grad():
                trainer.initialize(dictionary, sample)
            base_lr = self.cfg.lr if self.cfg.lr is not None else float(trainer.learning_rate(dictionary))
            params = [p for p in dictionary.parameters() if p.requires_grad]
            # fused Adam: never slower than foreach here, up to 4x faster on busy cores (measured in featureforge-sae)
            optimizer = torch.optim.Adam(params, lr=base_lr, betas=tuple(self.cfg.adam_betas)[:2], fused=True)
            state = TrainState(step=0, rows_seen=0, rows_since_fired=torch.zeros(dictionary.d_dict, dtype=torch.long, device=self.device),
                               world_size=self.world)
            members.append(Member(label, run_dir, trainer, dictionary, optimizer, state, base_lr))
            configs.append(self._config_for(label, trainer, dictionary.d_dict, holdout, scale))
        torch.manual_seed(self.cfg.seed)  # the step RNG starts from a known state whatever was built
        return members, configs

    # -- checkpoint --------------------------------------------------------------------------
    def _checkpoint(self, members: list[Member], readers: list[ShuffledReader], step: int, rows: int, metric_offsets: list[int]) -> None:
        cursors = {str(r.rank): r.state_dict() for r in readers}
        if self.world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, cursors)
            cursors = {k: v for part in gathered for k, v in part.items()}
        if self.rank != 0:
            return
        tensors: dict[str, torch.Tensor] = dict(rng_tensors())
        meta = []
        for i, m in enumerate(members):
            for key, value in m.dictionary.state_dict().items():
                tensors[f"m{i}.model.{key}"] = value.detach().cpu()
            opt_tensors, opt_meta = optimizer_tensors(m.optimizer, f"m{i}.adam.")
            tensors.update({k: v.cpu() for k, v in opt_tensors.items()})
            tensors[f"m{i}.rows_since_fired"] = m.state.rows_since_fired.cpu()
            meta.append({"optimizer": opt_meta, "window": m.window, "metrics_offset": metric_offsets[i]})
            m.dictionary.save(m.run_dir)
        save_checkpoint(self.out, tensors, {"step": step, "rows_seen": rows, "cursors": cursors, "members": meta})

    def _restore(self, members: list[Member], readers: list[ShuffledReader]) -> tuple[int, int]:
        found = load_checkpoint(self.out)
        if found is None:
            return 0, 0
        tensors, state = found
        for i, m in enumerate(members):
            model = {k[len(f"m{i}.model."):]: v for k, v in tensors.items() if k.startswith(f"m{i}.model.")}
            m.dictionary.load_state_dict(model)
            load_optimizer(m.optimizer, tensors, f"m{i}.adam.", state["members"][i]["optimizer"])
            m.state.rows_since_fired.copy_(tensors[f"m{i}.rows_since_fired"])
            m.window = dict(state["members"][i]["window"])
            metrics = m.run_dir / METRICS_FILE
            if self.rank == 0 and metrics.exists():
                with open(metrics, "r+b") as f:
                    f.truncate(state["members"][i]["metrics_offset"])
        for reader in readers:
            reader.load_state_dict(state["cursors"][str(reader.rank)])
        restore_rng(tensors)
        return int(state["step"]), int(state["rows_seen"])

    # -- main --------------------------------------------------------------------------------
    def execute(self) -> list[Path]:
        from .progress import progress_bar

        self._check_out_dir()
        train_chunks, held = split_chunks(self.store, self.cfg.holdout_rows)
        holdout = [c.index for c in held]
        train_rows = sum(c.rows for c in train_chunks)
        total_rows = self.cfg.rows if self.cfg.rows is not None else int(self.cfg.epochs * train_rows)
        total_steps = total_rows // self.cfg.batch_size
        if total_steps <= 0:
            raise BadInputError(f"{total_rows} training rows make no step of --batch-size {self.cfg.batch_size}; train on more rows or use a smaller batch")
        norm = self.store.normalisation()
        scale = float(norm.get("scale", 1.0)) if self.cfg.normalise else 1.0
        sample = self._init_sample(train_chunks, scale)
        members, configs = self._build_members(scale, sample, holdout)
        if self.resume:
            self._check_resumable(configs)
            if all(is_complete(d) for d in self._run_dirs()):
                return self._run_dirs()
        readers = self._readers(train_chunks)
        step, rows_seen = self._restore(members, readers) if self.resume else (0, 0)
        if self.rank == 0:
            for m, config in zip(members, configs):
                config.write(m.run_dir)
                m.dictionary.config = config.to_dict()
        evaluators = _eval_instances(self.cfg, self.store) if self.cfg.eval_every > 0 else []
        streams = [_shard_batches(r) for r in readers]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.dtype == "bfloat16" else contextlib.nullcontext()
        metric_files = [open(m.run_dir / METRICS_FILE, "a") if self.rank == 0 else None for m in members]
        next_checkpoint = (rows_seen // self.cfg.checkpoint_every + 1) * self.cfg.checkpoint_every
        bar = progress_bar(total_steps * self.cfg.batch_size, f"train {self.trainer_name}", initial=rows_seen,
                           enabled=None if (self.show_progress and self.rank == 0) else False)
        window_start = time.perf_counter()
        window_rows = 0
        try:
            while step < total_steps:
                batches = [self._to_device(next(s), scale) for s in streams]
                for m in members:
                    m.optimizer.param_groups[0]["lr"] = lr_at(step, total_steps, m.base_lr, self.cfg)
                    m.state.step, m.state.rows_seen = step, rows_seen
                    self._step(m, batches, autocast, step, rows_seen)
                step += 1
                rows_seen += self.cfg.batch_size
                window_rows += self.cfg.batch_size
                bar.update(self.cfg.batch_size)
                if step % self.cfg.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    for m, f in zip(members, metric_files):
                        line = self._log_line(m, step, rows_seen, window_rows / max(elapsed, 1e-9))
                        if f is not None:
                            f.write(json.dumps(line) + "\n")
                            f.flush()
                    bar.set_postfix(fvu=f"{line['fvu']:.4f}", l0=f"{line.get('l0', 0):.1f}", refresh=False)
                    window_start, window_rows = time.perf_counter(), 0
                if evaluators and (step % self.cfg.eval_every == 0 or step == total_steps):
                    paused = time.perf_counter()
                    self._evaluate(members, configs, evaluators, metric_files, step, rows_seen)
                    window_start += time.perf_counter() - paused  # evaluation time is not training throughput
                if rows_seen >= next_checkpoint or step == total_steps:
                    offsets = [f.tell() if f is not None else 0 for f in metric_files]
                    self._checkpoint(members, readers, step, rows_seen, offsets)
                    next_checkpoint = (rows_seen // self.cfg.checkpoint_every + 1) * self.cfg.checkpoint_every
        finally:
            bar.close()
            for s in streams:
                s.close()
            for f in metric_files:
                if f is not None:
                    f.close()
        if self.rank == 0:
            # "complete" is written last: a kill while saving or plotting leaves a run --resume finishes.
            for m, config in zip(members, configs):
                config.training_result = {"steps": step, "rows": rows_seen}
                m.dictionary.save(m.run_dir, config)
                _plot_metrics(m.run_dir)
                config.status = STATUS_COMPLETE
                config.write(m.run_dir)
        return self._run_dirs()

    def _evaluate(self, members: list[Member], configs: list[RunConfig], evaluators: list[Any], metric_files: list[Any],
                  step: int, rows_seen: int) -> None:
        """Run the evaluators on a copy of each member's current dictionary; log one metrics line each.

        Rank 0 only (the others wait at a barrier). The RNG states are restored afterwards and the
        dictionary evaluated is a copy, so the training stream is exactly the one without evaluation.
        """
        if self.rank == 0:
            from .evaluation import select_eval_rows
            from .roles import EvaluationContext

            with _rng_preserved(), torch.no_grad():
                for m, config, f in zip(members, configs, metric_files):
                    started = time.perf_counter()
                    copy = m.trainer.build(self.store.d_in)
                    copy.load_state_dict(m.dictionary.state_dict())
                    copy.to(self.device).eval()
                    context = EvaluationContext(
                        store=self.store,
                        out_dir=m.run_dir / "plots" / "during_training",
                        run_dir=m.run_dir,
                        extra={"eval_rows": select_eval_rows(self.store, config.to_dict()), "run_config": config.to_dict(),
                               "device": str(self.device), "progress": False},
                    )
                    line: dict[str, Any] = {"step": step, "rows": rows_seen}
                    for evaluator in evaluators:
                        result = evaluator.evaluate(copy, context)
                        for key, value in result.metrics.items():
                            if isinstance(value, bool) or not isinstance(value, (int, float)):
                                continue
                            line[f"{evaluator.name}/{key}"] = value if math.isfinite(value) else None
                    line["eval_seconds"] = time.perf_counter() - started
                    if f is not None:
                        f.write(json.dumps(line) + "\n")
                        f.flush()
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _to_device(self, part: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
        """One data shard's batch on the device, in training units."""
        acts = part["acts"].to(self.device, non_blocking=True).float()
        if scale != 1.0:
            acts.mul_(scale)
        batch = {"acts": acts}
        for column in self.columns[1:]:
            extra = part[column].to(self.device, non_blocking=True)
            if column == "grads":
                # dL/d(s*x) = (dL/dx)/s: gradients in the units the trainer sees acts in.
                extra = extra.float()
                if scale != 1.0:
                    extra.div_(scale)
            batch[column] = extra
        return batch

    def _step(self, m: Member, batches: list[dict[str, torch.Tensor]], autocast: Any, step: int, rows_seen: int) -> None:
        """One optimiser step over this process's data shards: per-shard losses, averaged gradients."""
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
            m.window["grad_norm"] = m.window.get("grad_norm", 0.0) + float(norm)  # before clipping, logged as a mean
        m.trainer.before_step(m.dictionary, m.state)
        m.optimizer.step()
        m.trainer.after_step(m.dictionary, m.state)
        m.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            m.state.rows_since_fired.add_(self.cfg.batch_size)
            fired = [out.active for out in outs if out.active is not None]
            if fired:
                active = torch.stack([f.to(torch.int32) for f in fired]).amax(0)
                m.state.all_reduce(active, "max")
                m.state.rows_since_fired.masked_fill_(active.bool(), 0)
            for batch, out in zip(batches, outs):
                x = batch["acts"]
                x_hat = out.x_hat.detach().float()
                # FVU sums add up over shards (as over ranks); the other scalars are averaged.
                acc = {"fvu_num": (x - x_hat).pow(2).sum(), "fvu_den": (x - x.mean(0)).pow(2).sum(),
                       "loss": out.loss.detach().float() / len(outs)}
                if out.l0 is not None:
                    acc["l0"] = torch.as_tensor(_scalar(out.l0)) / len(outs)
                for key, value in out.metrics.items():
                    acc[key] = torch.as_tensor(_scalar(value)) / len(outs)
                for key, value in acc.items():
                    m.window[key] = m.window.get(key, 0.0) + float(value)
            m.window["_steps"] = m.window.get("_steps", 0.0) + 1

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
        window = dict(m.window)
        m.window = {}
        if self.world > 1:
            import torch.distributed as dist

            keys = sorted(window)
            values = torch.tensor([window[k] for k in keys], dtype=torch.float64)
            dist.all_reduce(values)
            window = {k: float(v) / (self.world if k != "fvu_num" and k != "fvu_den" else 1) for k, v in zip(keys, values)}
        steps = max(window.pop("_steps", 1.0), 1.0)
        num, den = window.pop("fvu_num", 0.0), window.pop("fvu_den", 0.0)
        # A trainer with its own dead_after (AuxK) defines dead the same way in the log.
        dead_after = int(getattr(m.trainer.options, "dead_after", None) or self.cfg.dead_after)
        dead = float((m.state.rows_since_fired >= dead_after).float().mean())
        line = {"step": step, "rows": rows, "lr": m.optimizer.param_groups[0]["lr"], "fvu": num / den if den else float("nan")}
        line.update({k: v / steps for k, v in window.items()})
        line["dead_fraction"] = dead
        line["rows_per_s"] = rows_per_s
        return line


def _plot_metrics(run_dir: Path) -> Path | None:
    """plots/training.png: loss, FVU, L0 and dead fraction against rows seen."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    keys = [k for k in ("loss", "fvu", "l0", "dead_fraction") if any(k in line for line in lines)]
    # Evaluation during training: each evaluator's score (or FVU) on its own panel.
    keys += sorted({k for line in lines for k in line if "/" in k and k.rsplit("/", 1)[1] in ("score", "fvu")})
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    axes = [axes] if len(keys) == 1 else list(axes)
    for ax, key in zip(axes, keys):
        points = [(line["rows"], line[key]) for line in lines if line.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if "/" in key else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("rows")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(4))
        if key in ("loss", "fvu") and points and all(p[1] > 0 for p in points):
            ax.set_yscale("log")
    fig.tight_layout()
    out = run_dir / "plots" / "training.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

