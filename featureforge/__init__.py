"""featureforge: learn and study feature dictionaries from neural-network activations.

The library API has the CLI's verbs: ``cache``, ``open_store``, ``train``, ``evaluate``, ``compare``, ``ablate``,
``load``, ``export`` and ``import_run``. Plugins subclass the role classes (``ActivationSource``,
``DictionaryTrainer``, ``Evaluator``; trainers build a ``Dictionary``) and register them with
``hookimpl``. ``__all__`` is the public API, pinned by ``tests/test_public_api.py``; the packages'
faces ``featureforge.store``, ``featureforge.training`` and ``featureforge.evaluation`` and the modules
``featureforge.evaluation.metrics``, ``featureforge.plots``, ``featureforge.dictionary``,
``featureforge.testing``, ``featureforge.interventions``, ``featureforge.steering``,
``featureforge.vectors`` (steering vectors), ``featureforge.decomposition``,
``featureforge.live`` (the live model a source's splice yields), ``featureforge.sites`` (torch hook
sites), ``featureforge.comparison`` (``compare`` and reading a comparison back) and ``featureforge.runtime`` are public too (see docs/plugins.md). Everything else may change.
Importing the package changes no environment variable (``featureforge.runtime`` holds the CLI's
opt-in process settings).
"""

from typing import Any

from .api import ablate, cache, compare, decompose, evaluate, export, import_run, load, make_source, open_store, steer, steered, train, vector
from .evaluation import EvaluationContext, rebuild_source
from .errors import (
    BadInputError,
    CorruptRunError,
    CorruptStoreError,
    FeatureforgeError,
    OptionError,
    PluginError,
    StoreError,
    StoreMismatchError,
)
from .hookspecs import hookimpl
from .plugins import get_registry
from .progress import progress_bar
from .roles import (
    ActivationSource,
    DictionaryTrainer,
    EvaluationResult,
    Evaluator,
    Site,
    StepOutput,
    TrainState,
)
from .store import ActivationStore

__version__ = "0.1.0"

__all__ = [
    "ActivationSource",
    "ActivationStore",
    "BadInputError",
    "CorruptRunError",
    "CorruptStoreError",
    "Dictionary",
    "DictionaryTrainer",
    "EvaluationContext",
    "EvaluationResult",
    "Evaluator",
    "FeatureforgeError",
    "OptionError",
    "PluginError",
    "Site",
    "StepOutput",
    "StoreError",
    "StoreMismatchError",
    "TrainState",
    "ablate",
    "cache",
    "compare",
    "decompose",
    "evaluate",
    "export",
    "get_registry",
    "hookimpl",
    "import_run",
    "load",
    "make_source",
    "open_store",
    "progress_bar",
    "rebuild_source",
    "steer",
    "steered",
    "train",
    "vector",
]


def __getattr__(name: str) -> Any:
    # ``Dictionary`` is a torch module: imported on first use, so ``import featureforge`` (and
    # every ``featureforge --help``) stays free of torch.
    if name == "Dictionary":
        from .dictionary import Dictionary

        return Dictionary
    raise AttributeError(f"module 'featureforge' has no attribute {name!r}")
