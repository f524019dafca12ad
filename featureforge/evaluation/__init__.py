"""``featureforge evaluate``: the verb, the context evaluators read, the metrics and the sweep summary.

Modules, one job each: ``_evaluate`` (the verb: load a run, pick its eval rows, run evaluators,
write ``report.json``), ``_context`` (``EvaluationContext``: what an evaluator is given),
``metrics`` (public: the formulas), ``_accumulators`` (metrics streamed over the eval rows) and
``_sweeps`` (a sweep folder's members scored side by side). The eval rows themselves are the
store's hold-out split (``featureforge.store``).
"""

from typing import Any

from ._context import EvaluationContext, rebuild_source, recorded_source_class
from ._evaluate import default_evaluators, evaluate, summary_lines
from ._sweeps import evaluate_sweep, is_sweep, pareto_front

__all__ = [
    "CodeMatchStats",
    "EvaluationContext",
    "ReconstructionStats",
    "default_evaluators",
    "evaluate",
    "evaluate_sweep",
    "is_sweep",
    "metrics",
    "pareto_front",
    "rebuild_source",
    "recorded_source_class",
    "summary_lines",
]


def __getattr__(name: str) -> Any:
    # The metrics and accumulators need torch; loaded on first use.
    import importlib

    if name == "metrics":
        return importlib.import_module(".metrics", __name__)
    if name in ("CodeMatchStats", "ReconstructionStats"):
        return getattr(importlib.import_module("._accumulators", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
