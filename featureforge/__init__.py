"""featureforge: learn and study feature dictionaries from neural-network activations.

The library API has the CLI's verbs: ``cache``, ``open_store`` (and, as they land, ``train``,
``evaluate``, ``load``). Plugins subclass the role classes and register them with ``hookimpl``.
"""

from .api import cache, evaluate, export, import_run, load, make_source, open_store, steer, steered, train
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
from .options import describe_options, parse_options
from .plugins import get_registry
from .progress import progress_bar
from .roles import (
    ActivationSource,
    Batch,
    DictionaryTrainer,
    EvaluationContext,
    EvaluationResult,
    Evaluator,
    Plugin,
    StepOutput,
    TrainState,
)
from .store import ActivationStore

__version__ = "0.1.0"

__all__ = [
    "ActivationSource",
    "ActivationStore",
    "BadInputError",
    "Batch",
    "CorruptStoreError",
    "DictionaryTrainer",
    "EvaluationContext",
    "EvaluationResult",
    "Evaluator",
    "FeatureforgeError",
    "OptionError",
    "Plugin",
    "PluginError",
    "StoreError",
    "StepOutput",
    "StoreMismatchError",
    "TrainState",
    "cache",
    "evaluate",
    "export",
    "import_run",
    "load",
    "steer",
    "steered",
    "train",
    "describe_options",
    "get_registry",
    "hookimpl",
    "make_source",
    "open_store",
    "parse_options",
    "progress_bar",
]
