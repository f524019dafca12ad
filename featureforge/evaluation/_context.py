"""``EvaluationContext``: everything an evaluator may use, filled by the core.

``featureforge evaluate`` and the training loop (evaluation during training) build it; an
evaluator reads its typed fields and never rebuilds what the core owns. In particular the store's
source (the live model of an ``hf`` store, the generator of a synthetic one) is rebuilt by the core
from the store's recorded name and options, once, the first time an evaluator asks for it: a
model is loaded only by evaluators that need one, and only once per context (contexts made with
``derive`` share it, so a sweep's members and repeated evaluations during training load it once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import BadInputError, PluginError
from ..run import RunConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..store._holdout import EvalRows
    from ..roles import ActivationSource
    from ..store._view import ActivationStore

__all__ = ["EvaluationContext", "rebuild_source"]

_UNSET: Any = object()


class EvaluationContext:
    """What an evaluator may use.

    Parameters (all but ``store`` and ``out_dir`` optional; ``evaluate`` fills every one):

    store
        The activation store evaluated on (``None`` only for evaluators that need none).
    out_dir
        Folder for the evaluator's artifacts (plots, tables, HTML); created on demand.
    run_dir, run_config
        The run folder and its ``config.json`` (a ``RunConfig``, or its contents as a mapping)
        when the dictionary comes from a run: ``context.run`` is the typed ``RunConfig``,
        ``context.run_config`` the same as a plain dict.
    eval_rows
        The rows to evaluate on; default: the run's held-out chunks when ``store`` is its
        training store, else the store's first committed rows (see ``evalrows.select_eval_rows``).
    device
        Torch device the dictionary is on and evaluators should compute on.
    progress
        Whether long work may show a progress bar (``False`` in tests and during training).
    source
        A live source to use instead of rebuilding the store's (e.g. one already loaded).
    """

    def __init__(
        self,
        store: "ActivationStore | None",
        out_dir: str | Path,
        *,
        run_dir: str | Path | None = None,
        run_config: RunConfig | Mapping[str, Any] | None = None,
        eval_rows: "EvalRows | None" = None,
        device: str = "cpu",
        progress: bool = True,
        source: "ActivationSource | None" = None,
        extra: Mapping[str, Any] | None = None,
    ):
        # ``extra`` is the first version's grab-bag; its known keys map onto the typed fields.
        extra = dict(extra or {})
        unknown = sorted(set(extra) - {"eval_rows", "run_config", "device", "progress"})
        if unknown:
            raise TypeError(f"EvaluationContext: unknown extra keys {unknown}; use the typed arguments")
        self.store = store
        self.out_dir = Path(out_dir)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        given = run_config if run_config is not None else extra.get("run_config")
        if isinstance(given, RunConfig):
            self.run: RunConfig | None = given
            self.run_config: dict[str, Any] = given.to_dict()
        else:
            self.run_config = dict(given or {})
            whole = {"trainer", "d_in", "d_dict"} <= set(self.run_config)
            self.run = RunConfig.from_dict(self.run_config, run_dir or "run config") if whole else None
        self.device = str(extra.get("device") or device)
        self.progress = bool(extra.get("progress", progress))
        self._eval_rows = eval_rows if eval_rows is not None else extra.get("eval_rows")
        self._source = source
        # Shared with derived contexts: rebuilt sources by their overrides.
        self._sources: dict[str, "ActivationSource"] = {}

    @property
    def eval_rows(self) -> "EvalRows":
        """The held-out rows (chosen on first use when not given)."""
        if self._eval_rows is None:
            from ..store._holdout import select_eval_rows

            if self.store is None:
                raise BadInputError("this evaluator needs an activation store; pass --store")
            self._eval_rows = select_eval_rows(self.store, self.run_config)
        return self._eval_rows

    @property
    def roles(self) -> dict[str, Any]:
        """Which store site(s) fill each batch role of the run (config.json ``sites``, e.g.
        ``{"acts": "in", "target": "out"}``); empty for a run on a one-site store."""
        return dict(self.run_config.get("sites") or {})

    def role_scale(self, site: str) -> float:
        """The normalisation scale the run's loop applied to ``site``'s rows (1.0 when it applied none)."""
        norm = self.run_config.get("normalisation") or {}
        if not norm.get("applied", True):
            return 1.0
        return float((norm.get("sites") or {}).get(site, norm.get("scale", 1.0)))

    def role_rows(self, role: str, start: int, stop: int, training_units: bool = True) -> Any:
        """Rows ``start:stop`` of a role as a float32 tensor on ``device``: ``acts``/``target`` [n, d],
        ``sites`` [n, S, d]; in training units (each site times its scale, as the loop fed them) or
        the store's own. The rows of every site are the same tokens as ``eval_rows``' rows."""
        import torch

        roles = self.roles
        if role not in roles:
            raise BadInputError(f"run {self.run_dir} has no {role!r} role (its roles: {', '.join(roles) or 'acts only'})")
        whole = getattr(self.store, "base", self.store)
        names = list(roles[role]) if role == "sites" else [roles[role]]
        parts = []
        for name in names:
            rows = torch.from_numpy(whole.site(name).read(start, stop)).to(self.device)
            parts.append(rows * self.role_scale(name) if training_units else rows)
        return torch.stack(parts, dim=1) if role == "sites" else parts[0]

    @property
    def given_source(self) -> "ActivationSource | None":
        """The source passed in by the caller, if any (then ``source`` is it, not a rebuilt one)."""
        return self._source

    @property
    def source(self) -> "ActivationSource":
        """The live source: the one given, else the store's source rebuilt once by the core."""
        if self._source is not None:
            return self._source
        return self.rebuilt_source()

    def rebuilt_source(self, **overrides: Any) -> "ActivationSource":
        """The store's recorded source with ``overrides`` replacing some options (e.g. ``device``);
        built on first use, then kept for this context and those ``derive``d from it."""
        if self.store is None:
            raise BadInputError("this evaluator needs the store's source, but no store was given; pass --store")
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in self._sources:
            self._sources[key] = rebuild_source(getattr(self.store, "base", self.store), overrides)
        site = self.store.site_name if len(getattr(self.store, "base", self.store).sites) > 1 else None
        if site is None:
            return self._sources[key]
        # a run on one site of several: the source reading that site alone (it splices there)
        site_key = f"{key}@{site}"
        if site_key not in self._sources:
            self._sources[site_key] = self._sources[key].for_site(site)
        return self._sources[site_key]

    def derive(self, **changes: Any) -> "EvaluationContext":
        """A copy with some fields changed that shares the rebuilt sources (same store only)."""
        fields = {"store": self.store, "out_dir": self.out_dir, "run_dir": self.run_dir, "run_config": self.run or self.run_config,
                  "eval_rows": self._eval_rows, "device": self.device, "progress": self.progress, "source": self._source}
        if ("store" in changes and changes["store"] is not self.store) or "run_config" in changes:
            fields["eval_rows"] = None  # chosen again for the new store or run
        fields.update(changes)
        out = EvaluationContext(**fields)
        if getattr(out.store, "base", out.store) is getattr(self.store, "base", self.store):  # a site view shares its store's source
            out._sources = self._sources
        return out

    def __repr__(self) -> str:
        url = getattr(self.store, "url", None)
        return f"EvaluationContext(store={url!r}, out_dir={str(self.out_dir)!r}, run_dir={self.run_dir!r}, device={self.device!r})"


def recorded_source_class(store: "ActivationStore") -> "type[ActivationSource] | None":
    """The installed class of the source ``store`` records (``None`` when none is installed):
    what an evaluator's ``default_for`` asks about a store without rebuilding its model."""
    from ..plugins import get_registry

    name = (store.source or {}).get("name")
    table = get_registry().tables()["source"]
    return table[name].cls if name in table else None  # type: ignore[return-value]


def rebuild_source(store: "ActivationStore", overrides: Mapping[str, Any] | None = None) -> "ActivationSource":
    """The source a store was cached from, rebuilt from its recorded name and options.

    The one place a store's source is rebuilt: evaluators get it through ``context.source``.
    Raises ``BadInputError`` (one line) when the source is not installed or its recorded options
    no longer parse.
    """
    return source_from_record(store.source or {}, overrides, f"store {store.url}", "re-cache it with this featureforge")


def source_from_record(recorded: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, what: str = "the record",
                       fix: str = "record it again with this featureforge") -> "ActivationSource":
    """A source rebuilt from a recorded ``{"name", "options"}`` (a store's, a steering vector's), one line when it cannot be."""
    from ..plugins import get_registry

    name = recorded.get("name")
    if not name:
        raise BadInputError(f"{what} records no source, so its source cannot be rebuilt; {fix}")
    try:
        cls = get_registry().get("source", name)
    except PluginError:
        raise BadInputError(f"{what} was made by source {name!r}, which is not installed; install its plugin") from None
    options = {**dict(recorded.get("options") or {}), **dict(overrides or {})}
    try:
        return cls(options)
    except Exception as exc:  # options of another version, a missing model file, ...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"cannot rebuild {what}'s source {name!r} from its recorded options: {detail}") from None
