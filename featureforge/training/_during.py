"""Evaluation during training (``-t eval_every=N``): which evaluators, with which options, run how.

The dictionary evaluated is a copy and every RNG is restored afterwards, so a run with evaluation
trains exactly as one without.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from ..evaluation._evaluate import default_evaluators
from ..options import evaluator_options
from ..plugins import get_registry
from ..run import RunConfig, plots_dir
from ..store._holdout import run_store
from ..store._view import ActivationStore

if TYPE_CHECKING:  # pragma: no cover
    from ..evaluation._context import EvaluationContext
    from ._settings import TrainConfig


def eval_instances(cfg: TrainConfig, store: ActivationStore) -> list[Any]:
    """The evaluators to run during training, with their options (validated before training starts)."""
    chosen = evaluator_options(cfg.eval_evaluators, cfg.eval_options, flag="-t eval_options=")
    if chosen is None:
        chosen = {name: [] for name in default_evaluators(store, "training")}
    registry = get_registry()
    return [registry.get("evaluator", name)(settings) for name, settings in chosen.items()]


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
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


def evaluate_members(members: Sequence[Any], configs: Sequence[RunConfig], evaluators: Sequence[Any], metric_files: Sequence[Any],
                     base: EvaluationContext, step: int, rows_seen: int, announce: Callable[[str], None] | None = None) -> None:
    """Run the evaluators on a copy of each member's current dictionary; write one metrics line each.

    ``announce`` hears what is being evaluated, so a progress bar can say so instead of freezing.

    ``base`` is the run's one context (store, device, no progress bars): each member's context is
    derived from it, so the store's source is rebuilt at most once per run."""
    with rng_preserved(), torch.no_grad():
        for m, config, f in zip(members, configs, metric_files):
            started = time.perf_counter()
            copy = m.trainer.build(m.dictionary.d_in)
            copy.load_state_dict(m.dictionary.state_dict())
            copy.to(base.device).eval()
            context = base.derive(out_dir=plots_dir(m.run_dir) / "during_training", run_dir=Path(m.run_dir), run_config=config)
            if config.sites:  # a run on one site of several: its acts are that site's
                context = context.derive(store=run_store(base.store, config))
            line: dict[str, Any] = {"step": step, "rows": rows_seen}
            for evaluator in evaluators:
                if announce is not None:
                    announce(f"evaluating {evaluator.name}" + (f" [{m.label}]" if m.label else "") + f" at step {step}")
                result = evaluator.evaluate(copy, context)
                for key, value in result.metrics.items():
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        continue
                    line[f"{evaluator.name}/{key}"] = value if math.isfinite(value) else None
            line["eval_seconds"] = time.perf_counter() - started
            if f is not None:
                f.write(json.dumps(line) + "\n")
                f.flush()
