"""featureforge: learn and study feature dictionaries from neural-network activations.

The library API has the CLI's verbs: ``cache``, ``open_store``, ``train``, ``evaluate``, ``load``,
``export`` and ``import_run``. Plugins subclass the role classes (``ActivationSource``,
``DictionaryTrainer``, ``Evaluator``; trainers build a ``Dictionary``) and register them with
``hookimpl``. ``__all__`` is the public API, pinned by ``tests/test_public_api.py``; the modules
``featureforge.evaluation.metrics``, ``featureforge.plots``, ``featureforge.dictionary``,
``featureforge.testing``, ``featureforge.interventions`` and ``featureforge.steering`` are public
too (see docs/plugins.md). Everything else may change.
"""

import os as _os
import sys as _sys
from typing import Any

# torch's OpenMP (libgomp) workers spin for ~300,000 iterations (several ms) after every parallel
# region; the sparse kernels then run work on plain Python threads (row-parallel top-k) that
# those spinning workers starve on a 2-core machine (small-shape step 31-36 -> 24-29 ms with a
# short spin, docs/benchmarks.md). libgomp reads the setting once, when torch loads, so it is
# set only if torch is not imported yet and the user chose no OpenMP wait policy of their own.
if "torch" not in _sys.modules and not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(_os.environ):
    _os.environ["GOMP_SPINCOUNT"] = "10000"
    _os.environ["FEATUREFORGE_SET_GOMP_SPINCOUNT"] = "1"

from .api import cache, evaluate, export, import_run, load, make_source, open_store, steer, steered, train
from .evaluation import EvaluationContext
from .errors import (
    BadInputError,
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
    StepOutput,
    TrainState,
)
from .store import ActivationStore

__version__ = "0.1.0"

__all__ = [
    "ActivationSource",
    "ActivationStore",
    "BadInputError",
    "CorruptStoreError",
    "Dictionary",
    "DictionaryTrainer",
    "EvaluationContext",
    "EvaluationResult",
    "Evaluator",
    "FeatureforgeError",
    "OptionError",
    "PluginError",
    "StepOutput",
    "StoreError",
    "StoreMismatchError",
    "TrainState",
    "cache",
    "evaluate",
    "export",
    "get_registry",
    "hookimpl",
    "import_run",
    "load",
    "make_source",
    "open_store",
    "progress_bar",
    "steer",
    "steered",
    "train",
]


def __getattr__(name: str) -> Any:
    # ``Dictionary`` is a torch module: imported on first use, so ``import featureforge`` (and
    # every ``featureforge --help``) stays free of torch.
    if name == "Dictionary":
        from .dictionary import Dictionary

        return Dictionary
    raise AttributeError(f"module 'featureforge' has no attribute {name!r}")
