"""Base classes of the three plugin roles: activation sources, dictionary trainers, evaluators.

A plugin subclasses one of them, sets ``name``, ``description`` and a typed ``Options`` dataclass,
and registers the class through a hook (see ``hookspecs.py``). The core instantiates it with the
parsed options and never needs to know the method.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping

import numpy as np

from .options import NoOptions, options_to_dict, parse_options

if TYPE_CHECKING:  # pragma: no cover
    from .store import ActivationStore

#: A batch of activations: ``acts [n, d]`` and optionally ``grads [n, d]``, ``token_ids [n]``,
#: ``doc_ids [n]``, ``positions [n]``, as numpy arrays or torch tensors.
Batch = dict[str, Any]


class Plugin:
    """What every registered class shares: a unique name, a description and typed options."""

    #: Unique name users type (``--source synthetic``).
    name: ClassVar[str] = ""
    #: One line shown by ``featureforge plugins``.
    description: ClassVar[str] = ""
    #: Dataclass of this plugin's options; ``-o key=value`` is parsed by its field types.
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None, **kwargs: Any):
        if options is not None and kwargs:
            raise TypeError("pass options either as an Options instance/mapping or as keywords")
        if isinstance(options, self.Options):
            self.options = options
        else:
            self.options = parse_options(self.Options, options if options is not None else kwargs, owner=f"{self.kind} {self.name!r}")
        self.__post_init__()

    def __post_init__(self) -> None:
        """Validate options or set up state; raise ``OptionError`` with a one-line fix."""

    kind: ClassVar[str] = "plugin"

    def options_dict(self) -> dict[str, Any]:
        return options_to_dict(self.options)


class ActivationSource(Plugin):
    """Turns a model (or a generator) and data into batches of activation rows.

    Implement ``rows(start, stop)`` if any row range can be produced on its own (random access:
    resumable and shardable for free), otherwise ``stream(rank, world_size, skip_rows)``.
    """

    kind: ClassVar[str] = "source"

    #: Extra per-row columns this source writes besides ``acts``: name -> numpy dtype string.
    #: ``grads`` has the shape and dtype of ``acts``.
    @property
    def columns(self) -> dict[str, str]:
        return {}

    @property
    def d_in(self) -> int:
        """Width of one activation row."""
        raise NotImplementedError

    @property
    def n_rows(self) -> int | None:
        """Total rows the source can produce, or ``None`` when unbounded."""
        return None

    def provenance(self) -> dict[str, Any]:
        """Where the activations come from (model, hook point, data, seed), stored with them."""
        return {}

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` of the source; deterministic, independent of any other call."""
        raise NotImplementedError

    @property
    def random_access(self) -> bool:
        return type(self).rows is not ActivationSource.rows

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0) -> Iterator[Batch]:
        """Batches of writer ``rank``'s share of the data, after skipping ``skip_rows`` rows of it."""
        raise NotImplementedError(f"source {self.name!r} implements neither rows() nor stream()")

    def ground_truth(self) -> dict[str, np.ndarray] | None:
        """Known true features (synthetic sources), saved into the store for evaluators."""
        return None

    @contextlib.contextmanager
    def splice(self, dictionary: Any) -> Iterator[Any]:
        """Run the live model with the hook point replaced by ``dictionary``'s reconstruction."""
        raise NotImplementedError(f"source {self.name!r} cannot run a live model with a dictionary spliced in")
        yield


class DictionaryTrainer(Plugin):
    """Builds a dictionary and defines its loss; the core owns the loop, data and checkpoints."""

    kind: ClassVar[str] = "trainer"

    def build(self, d_in: int) -> Any:
        """A fresh ``Dictionary`` for rows of width ``d_in``."""
        raise NotImplementedError

    def loss(self, dictionary: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        """Scalar loss tensor for one batch and a dict of metrics to log."""
        raise NotImplementedError

    def after_step(self, dictionary: Any, batch: Batch, step: int) -> None:
        """Called after each optimiser step (decoder renormalisation, dead-latent bookkeeping)."""


@dataclasses.dataclass
class EvaluationContext:
    """What an evaluator may use: the store, an optional live source and an output folder."""

    store: "ActivationStore | None"
    out_dir: Path
    source: ActivationSource | None = None
    run_dir: Path | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvaluationResult:
    """Metrics (JSON-ready numbers) and artifact paths (plots, HTML) written by an evaluator."""

    metrics: dict[str, Any]
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)


class Evaluator(Plugin):
    """Measures or visualises a trained dictionary."""

    kind: ClassVar[str] = "evaluator"

    def evaluate(self, dictionary: Any, context: EvaluationContext) -> EvaluationResult:
        raise NotImplementedError


ROLE_BASES: dict[str, type[Plugin]] = {
    "source": ActivationSource,
    "trainer": DictionaryTrainer,
    "evaluator": Evaluator,
}
