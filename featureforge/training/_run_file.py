"""``--config run.toml``: a run's settings in one TOML file, read the same way by the CLI and the API.

Top-level keys are the long flags of ``featureforge train`` with underscores (``batch_size = 2048``),
``[options]`` are the trainer's ``-o`` and ``[train_options]`` the loop's ``-t``. What is given on
the command line (or as a keyword argument) wins over the file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..errors import OptionError

#: Top-level keys a run file may set (the long flags of ``featureforge train``).
TOP_LEVEL_KEYS = ("trainer", "store", "out", "rows", "epochs", "batch_size", "lr", "dtype", "threads", "seed", "resume", "overwrite")


@dataclasses.dataclass
class RunFile:
    """A parsed run file: top-level settings, trainer options and loop options."""

    path: str
    top: dict[str, Any]
    options: dict[str, Any]
    train_options: dict[str, Any]


def read_run_file(path: str | os.PathLike, flag: str = "--config") -> RunFile:
    """Parse a run file, refusing a missing file, bad TOML or an unknown key in one line."""
    import tomllib

    shown = f"{flag}{path}" if flag.endswith("=") else f"{flag} {path}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise OptionError(f"{shown}: no such file; pass a TOML file with keys like trainer = \"topk\"") from None
    except IsADirectoryError:
        raise OptionError(f"{shown} is a folder; pass a TOML file with keys like trainer = \"topk\"") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"{shown} is not valid TOML ({exc}); fix the file") from None
    parsed = RunFile(str(path), {}, {}, {})
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in ("options", "train_options"):
            if not isinstance(value, dict):
                raise OptionError(f"{shown}: `{key}` must be a table ([{name}] with key = value lines)")
            setattr(parsed, name, {k.replace("-", "_"): v for k, v in value.items()})
        elif name in TOP_LEVEL_KEYS:
            parsed.top[name] = value
        else:
            valid = ", ".join([*TOP_LEVEL_KEYS, "[options]", "[train_options]"])
            raise OptionError(f"{shown}: unknown key {key!r}; valid keys: {valid}")
    return parsed
