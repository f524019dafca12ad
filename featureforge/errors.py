"""Errors that featureforge shows to users as one line naming the problem and the fix.

Each subclasses the matching builtin too, so code that already catches ``ValueError`` or
``FileNotFoundError`` keeps working (the zarr-python pattern).
"""

from __future__ import annotations


class FeatureforgeError(Exception):
    """Base of every error the CLI prints as ``Error: <message>`` without a traceback."""


class PluginError(FeatureforgeError, LookupError):
    """An unknown plugin name, a duplicate registration, or a plugin that failed to load."""


class OptionError(FeatureforgeError, ValueError):
    """A ``-o key=value`` option that is unknown or cannot be parsed as its field's type."""


class BadInputError(FeatureforgeError, ValueError):
    """Input data that cannot be used as given: wrong shapes, NaN/Inf rows, unsupported files."""


class StoreError(FeatureforgeError, OSError):
    """An activation store that cannot be created, opened or continued as asked."""


class StoreMismatchError(StoreError):
    """An existing store was written by another source, options, d_in or layout."""


class CorruptStoreError(StoreError):
    """A store whose metadata or chunks are missing or damaged."""


class CorruptRunError(FeatureforgeError, ValueError):
    """A run folder whose config, weights or checkpoint are missing, damaged or not featureforge's."""
