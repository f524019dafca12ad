"""The loop's own settings (``TrainConfig``) and their checks.

Kept apart from the loop so that a config file, the CLI and the API all resolve settings the same
way before any data is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

from ..errors import FeatureforgeError, OptionError
from ..options import parse_options
from ..roles import DictionaryTrainer


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
    """Adam learning rate; default: the trainer's suggestion for this dictionary and run length (or a race, lr_search_fraction)."""
    lr_search_fraction: float = 0.0
    """Without --lr: share of the steps (at least 8, at most a quarter) spent racing candidate rates (featureforge.training._lr_search); 0: no race."""
    lr_search_factors: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
    """Without --lr: candidate rates as multiples of the trainer's suggestion for this dictionary."""
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
    dead_after: int | None = None
    """Rows without firing after which a latent counts as dead: in the log and in the AuxK loss of trainers without their own setting; default: the trainer's horizon for this dictionary (topk: 1,000 mean firing intervals, at most 10M rows), else 10M (Gao et al.'s and sparsify's)."""
    buffer_rows: int | None = None
    """Rows mixed in the reader's shuffle buffer (default: 8 chunks, at least 65536 rows)."""
    tee: str | None = None
    """Streamed runs (--source): also write the streamed training rows into this store (crash-safe; --resume continues it)."""
    data_shards: int | None = None
    """Shards the data is cut into; default: the DDP world size."""
    eval_every: int = 0
    """Steps between evaluations of the current dictionary during training (rank 0; metrics.jsonl lines with keys like downstream/ce_loss_score); 0: never."""
    eval_evaluators: list[str] | None = None
    """Evaluators run every eval_every steps; default: those that declare themselves defaults for the store (Evaluator.default_for; featureforge-hf: downstream when the source can splice), else reconstruction."""
    eval_options: list[str] | None = None
    """Options of those evaluators as EVALUATOR.KEY=VALUE (e.g. downstream.max_sequences=64); an option naming another evaluator adds it."""
    site: str | None = None
    """On a store of several sites: the site the trainer's acts come from (default: the trainer's choice, the store's first site)."""
    sites: str | None = None
    """On a store of several sites: all (or a comma list of site names) trains one dictionary per site in one pass over the data, each in OUT/<site>."""



def resolve_config(config: Mapping[str, Any]) -> TrainConfig:
    """Parse the loop's settings and refuse impossible ones in one line before any data is read."""
    cfg = parse_options(TrainConfig, config, owner="train")
    if cfg.batch_size <= 0:
        raise OptionError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise OptionError(f"--lr must be a positive learning rate (e.g. --lr 3e-4), got {cfg.lr}")
    if not 0 <= cfg.lr_search_fraction < 1 or any(not f > 0 for f in cfg.lr_search_factors):
        raise OptionError("lr_search_fraction must be in [0, 1) and lr_search_factors positive multiples "
                          f"(e.g. -t lr_search_factors=1,3,10,30), got {cfg.lr_search_fraction} and {cfg.lr_search_factors}")
    if len(cfg.adam_betas) < 2 or not all(0 <= b < 1 for b in cfg.adam_betas[:2]):
        raise OptionError(f"adam_betas must be two numbers in [0, 1) (e.g. -t adam_betas=0.9,0.999), got {cfg.adam_betas}")
    if cfg.dead_after is not None and cfg.dead_after <= 0:
        raise OptionError(f"dead_after must be a positive number of rows (e.g. -t dead_after=1000000), got {cfg.dead_after}")
    if cfg.eval_every < 0:
        raise OptionError(f"eval_every must be 0 (no evaluation during training) or a number of steps, got {cfg.eval_every}")
    if cfg.site is not None and cfg.sites is not None:
        raise OptionError("pass either --site NAME (one dictionary on one site) or --sites all|A,B (one per site), not both")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise OptionError(f"grad_clip must be a positive gradient norm (e.g. -t grad_clip=1.0) or none, got {cfg.grad_clip}")
    return cfg


def check_trainer_class(cls: type, name: str) -> None:
    """A trainer must implement ``build`` and ``loss``; say so by name instead of an empty NotImplementedError."""
    needed = ("build", "loss") if cls.trains else ("build",)  # a trainer with nothing to learn has no loss
    missing = [m for m in needed if getattr(cls, m) is getattr(DictionaryTrainer, m)]
    if missing:
        what = {"build": "build(self, d_in) returning a featureforge Dictionary",
                "loss": "loss(self, dictionary, batch, state) returning a StepOutput"}
        raise FeatureforgeError(
            f"trainer {name!r} ({cls.__module__}.{cls.__qualname__}) does not implement {' or '.join(missing)}; "
            f"a DictionaryTrainer must define {' and '.join(what[m] for m in missing)}"
        )
