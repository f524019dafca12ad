"""Base classes of the three plugin roles: activation sources, dictionary trainers, evaluators.

A plugin subclasses one of them, sets ``name``, ``description`` and a typed ``Options`` dataclass,
and registers the class through a hook (see ``hookspecs.py``). The core instantiates it with the
parsed options and never needs to know the method.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import numpy as np

from .options import NoOptions, options_to_dict, parse_options

if TYPE_CHECKING:  # pragma: no cover
    from .evaluation import EvaluationContext
    from .live import LiveModel
    from .store import ActivationStore

#: A batch of activations: ``acts [n, d]`` and optionally ``grads [n, d]``, ``token_ids [n]``,
#: ``doc_ids [n]``, ``seq_ids [n]``, ``positions [n]``, as numpy arrays or torch tensors. A source of
#: several sites (``ActivationSource.sites``) puts its first site's rows in ``acts`` and every further
#: site's rows ``[n, d_site]`` under that site's name.
Batch = dict[str, Any]

#: Batch keys a site may not be named (they are the columns every store may hold).
RESERVED_SITE_NAMES = frozenset({"acts", "grads", "token_ids", "doc_ids", "seq_ids", "positions", "target", "sites"})


@dataclasses.dataclass(frozen=True)
class Site:
    """One place a source reads activations from: a name (unique in the source), the row width, and
    which module (``hook``) and whether its ``output`` or ``input``, as the store records them."""

    name: str
    d_in: int
    hook: str = ""
    io: str = "output"


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

    @property
    def sites(self) -> list[Site]:
        """The sites every batch carries, in order; the first one's rows are ``acts``.

        The default is one site (its width ``d_in``): a store as before sites existed. A source that
        reads several sites in one pass (every block of a model, an MLP's input and output) lists
        them here and puts each further site's rows in the batch under its name; ``cache`` then
        writes one store with a column per site (docs/store.md, "Several sites").
        """
        return [Site(name="acts", d_in=int(self.d_in))]

    def for_site(self, name: str) -> "ActivationSource":
        """This source reading only site ``name`` (what evaluators splice or regenerate for a run on
        one site of a store of several). The default serves a one-site source, or site 0 of a
        source whose batches are the same there (``codes``, ``ground_truth`` stay the source's)."""
        names = [site.name for site in self.sites]
        if name in names[:1] or len(names) == 1:
            return self
        if type(self).splice is ActivationSource.splice:
            return self  # nothing site-specific to run: regenerating rows by index is the same for every site
        raise NotImplementedError(f"source {self.name!r} cannot run site {name!r} on its own; it would splice its first site")

    def provenance(self) -> dict[str, Any]:
        """Where the activations come from (model, hook point, data, seed), stored with them."""
        return {}

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` of the source; deterministic, independent of any other call."""
        raise NotImplementedError

    @property
    def random_access(self) -> bool:
        return type(self).rows is not ActivationSource.rows

    #: Whether ``stream(..., skip_rows=n)`` starts exactly at row ``n`` of the writer's share (the
    #: contract below): a continued cache and a resumed streamed run (``featureforge train --source``)
    #: rely on it. A live feed that cannot restart at a row sets False; its streamed runs then
    #: cannot ``--resume``. Random-access sources can always seek.
    seekable: ClassVar[bool] = True

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[Batch]:
        """Batches of writer ``rank``'s share of the data, after skipping ``skip_rows`` rows of it.

        ``max_rows`` is how many rows (after ``skip_rows``) the writer will store, so an expensive
        source need not compute a last batch's unused rows; a source may ignore it, but the rows it
        does yield must be the same whatever ``max_rows`` is.
        """
        raise NotImplementedError(f"source {self.name!r} implements neither rows() nor stream()")

    def ground_truth(self) -> dict[str, np.ndarray] | None:
        """Known true features (synthetic sources), saved into the store for evaluators."""
        return None

    def decode_tokens(self, token_ids: Any) -> list[str]:
        """Display text of each token id (as stored in ``token_ids``), one string per id.

        Joined, the pieces read as the text (a piece carries its leading space). Optional: sources
        without a tokenizer raise ``NotImplementedError``; reports then show the ids.
        """
        raise NotImplementedError(f"source {self.name!r} cannot turn token ids back into text")

    #: Whether ``splice`` is implemented (a live model evaluators and ``steer`` can run): a source
    #: that overrides ``splice`` sets it True.
    can_splice: ClassVar[bool] = False

    @contextlib.contextmanager
    def splice(self, dictionary: Any) -> Iterator[LiveModel]:
        """Run the live model with the hook point replaced by ``dictionary``'s reconstruction.

        Yields a ``featureforge.live.LiveModel``, also the seam for interventions
        (``featureforge.interventions``): ``live(input_ids, attention_mask, replace=fn, token_mask=...)``
        replaces the rows at the masked positions by ``fn(rows)``. Declare ``can_splice = True``.
        """
        raise NotImplementedError(f"source {self.name!r} cannot run a live model with a dictionary spliced in")
        yield


@dataclasses.dataclass
class StepOutput:
    """What ``DictionaryTrainer.loss`` returns for one batch (all in training units)."""

    #: Scalar to minimise.
    loss: Any
    #: Reconstruction [n, d_in]; the loop derives FVU from it.
    x_hat: Any
    #: Bool [d_dict]: latents that fired on this batch, for dead-latent bookkeeping (or None).
    active: Any = None
    #: Mean number of active latents per row (tensor or float), or None.
    l0: Any = None
    #: Further scalars to log (tensors are converted when logged).
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainState:
    """What the loop tells a trainer during a step."""

    step: int
    rows_seen: int
    #: Int64 [d_dict]: rows since each latent last fired (identical on every rank).
    rows_since_fired: Any
    world_size: int = 1
    #: Rows without firing after which a latent is dead in this run: what the trainer's
    #: ``dead_after(dictionary, loop_setting)`` decided, else 10M rows.
    dead_after: int | None = None

    def all_reduce(self, tensor: Any, op: str = "sum") -> Any:
        """Reduce a tensor across DDP ranks in place (``sum``, ``max``, ``min`` or ``mean``); no-op alone."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}
        dist.all_reduce(tensor, op=ops[op])
        if op == "mean":
            tensor /= self.world_size
        return tensor


class DictionaryTrainer(Plugin):
    """Builds a dictionary and defines its loss; the core owns the loop, data and checkpoints.

    Batches reach ``loss`` in training units (rows times the store's normalisation scale).
    """

    kind: ClassVar[str] = "trainer"
    #: Formats ``featureforge export``/``import`` can use with this trainer (e.g. "saelens").
    formats: ClassVar[tuple[str, ...]] = ()
    #: Store columns the loop reads and passes in each batch. ``("acts", "grads")`` asks for the
    #: cached gradients too: ``batch["grads"]`` is dL/d(training-unit acts), i.e. the stored
    #: dL/dx divided by the normalisation scale s (the acts are x*s, so dL/d(s*x) = g/s).
    columns: ClassVar[tuple[str, ...]] = ("acts",)
    #: Whether the dictionary is learned. A trainer with nothing to learn (``identity``: the
    #: site's own units) sets False; ``featureforge train`` then writes its run folder at once.
    trains: ClassVar[bool] = True

    #: Set by the loop before ``build``: each role's row width, ``{"acts": d_src, "target": d_tgt}``
    #: or ``{"sites": (S, d)}`` (``build`` gets ``d_in``: the ``acts`` width, or ``d`` of ``sites``).
    role_widths: dict[str, Any] = {}
    #: Set by the loop before ``build``: each role's normalisation scale (``sites``: one per site),
    #: what the rows were multiplied by; 1.0 with ``-t normalise=false``. A dictionary built for
    #: roles keeps them so that ``dictionary(rows)`` takes the store's own ``acts`` (or stacked
    #: ``sites``) rows and returns the estimate in the target's own units: evaluators call it so,
    #: on a dictionary in training and on one loaded from disk alike.
    role_scales: dict[str, Any] = {}

    #: The batch roles the loop knows how to fill from store sites (``sites_for``'s keys).
    SITE_ROLES: ClassVar[tuple[str, ...]] = ("acts", "target", "sites", "grads")

    def sites_for(self, store_sites: Sequence[str], site: str | None) -> dict[str, str | tuple[str, ...]]:
        """Which store site(s) fill each batch role ``loss`` reads; ``site`` is ``train --site`` (or None).

        Roles: ``acts`` [n, d] one site's rows; ``target`` [n, d_tgt] another site's rows (a
        transcoder maps ``acts`` to it); ``sites`` [n, S, d] several sites stacked, each normalised by
        its own statistics (a crosscoder); ``grads`` the gradients cached with the first site. The
        default reads ``acts`` from ``site`` or the store's first site (and ``grads`` from the same).
        """
        roles: dict[str, str | tuple[str, ...]] = {"acts": site or store_sites[0]}
        if "grads" in self.columns:
            roles["grads"] = roles["acts"]
        return roles

    def build(self, d_in: int) -> Any:
        """A fresh ``Dictionary`` for rows of width ``d_in`` (random init, seeded by the loop)."""
        raise NotImplementedError(f"trainer {self.name!r} does not implement build(self, d_in) returning a featureforge Dictionary")

    def initialize(self, dictionary: Any, sample: Any) -> None:
        """Data-dependent initialisation from a sample of training rows (e.g. ``b_dec``)."""

    def learning_rate(self, dictionary: Any, steps: int | None = None) -> float:
        """Default Adam learning rate when the user gives none, for a run of ``steps`` optimiser steps.

        Short runs want larger rates than the long ones a fixed rule is tuned for; a trainer that
        knows how its rate scales with the run's length uses ``steps`` (``None``: no run length known).
        """
        return 2e-4

    def loss(self, dictionary: Any, batch: Batch, state: TrainState) -> StepOutput:
        """Loss and reconstruction of one batch."""
        raise NotImplementedError(f"trainer {self.name!r} does not implement loss(self, dictionary, batch, state) returning a StepOutput")

    def dead_after(self, dictionary: Any, loop_setting: int | None) -> int | None:
        """Rows without firing after which a latent of ``dictionary`` is dead in this run (AuxK, the log).

        ``loop_setting`` is the loop's ``-t dead_after`` (None when not given). A trainer with its own
        option or a horizon for this dictionary decides here which wins; the default is the loop's
        setting, and ``None`` means Gao et al.'s (2024) 10M rows. The loop's ``dead_fraction`` log
        and ``TrainState.dead_after`` use the result, so the log and the method agree.
        """
        return loop_setting

    def before_step(self, dictionary: Any, state: TrainState) -> None:
        """After backward, before the optimiser step (e.g. remove gradient parallel to decoder rows)."""

    def after_step(self, dictionary: Any, state: TrainState) -> None:
        """After the optimiser step (e.g. renormalise decoder rows)."""

    def export(self, dictionary: Any, fmt: str, out_dir: Path) -> Path:
        """Write ``dictionary`` in another library's layout (one of ``formats``)."""
        raise NotImplementedError(f"trainer {self.name!r} cannot export to {fmt!r}")

    @classmethod
    def import_dictionary(cls, src_dir: Path, fmt: str) -> tuple[dict[str, Any], Any] | None:
        """(options, Dictionary) read from another library's layout, or None if not this trainer's."""
        return None


@dataclasses.dataclass
class EvaluationResult:
    """Metrics (JSON-ready numbers) and artifact paths (plots, HTML) written by an evaluator."""

    metrics: dict[str, Any]
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)


class Evaluator(Plugin):
    """Measures or visualises a trained dictionary.

    One instance may be called many times (once per sweep member, every ``eval_every`` steps
    during training); everything about the data comes from the context, not from the instance.
    """

    kind: ClassVar[str] = "evaluator"

    @classmethod
    def default_for(cls, store: ActivationStore, occasion: str) -> bool:
        """Whether this evaluator runs on ``store`` when the user names none.

        ``occasion`` is ``"evaluate"`` (``featureforge evaluate``, and the report at the end of
        training) or ``"training"`` (every ``eval_every`` steps, where it should be cheap). The
        core asks every installed evaluator, so a plugin makes itself a default without the core
        knowing its name; during training ``reconstruction`` runs when none claims the store.
        """
        return False

    def evaluate(self, dictionary: Any, context: EvaluationContext) -> EvaluationResult:
        """Metrics and artifacts of ``dictionary`` (on ``context.device``, in eval mode) on
        ``context.eval_rows`` (or the live ``context.source``), artifacts written under ``context.out_dir``."""
        raise NotImplementedError


ROLE_BASES: dict[str, type[Plugin]] = {
    "source": ActivationSource,
    "trainer": DictionaryTrainer,
    "evaluator": Evaluator,
}
