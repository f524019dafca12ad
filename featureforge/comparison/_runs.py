"""The runs a comparison reads: run folders (a sweep's members), their dictionaries, names and stores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError, OptionError
from ..store import ActivationStore, open_store
from ._match import Matching



@dataclass
class _Run:
    name: str
    path: Path
    dictionary: Any
    config: dict[str, Any]
    store: ActivationStore
    moments: Any = None
    rotated: Any = None  # Moments of the rotated codes (baseline)
    rotation: Any = None

    @property
    def m(self) -> int:
        return int(self.dictionary.d_dict)


@dataclass
class _Pair:
    i: int
    j: int
    directions: bool
    matches: dict[str, Matching] = field(default_factory=dict)
    #: [m_a] A's best correlation with rotated B; [m_b] B's best with rotated A.
    base_a: np.ndarray | None = None
    base_b: np.ndarray | None = None


def _expand(runs: Sequence[str | os.PathLike]) -> list[Path]:
    from ..evaluation._sweeps import is_sweep, sweep_members

    out: list[Path] = []
    for run in runs:
        path = Path(run)
        if not path.exists():
            raise BadInputError(f"run folder {path} does not exist; pass run folders written by featureforge train")
        out.extend(sweep_members(path) if is_sweep(path) else [path])
    return out


def _names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def _stores(paths: list[Path], configs: list[dict[str, Any]], store: Any) -> list[ActivationStore]:
    if store is None:
        given: list[Any] = []
        for path, cfg in zip(paths, configs):
            url = (cfg.get("store") or {}).get("url")
            if not url or not (Path(url).exists() or "://" in str(url)):
                raise BadInputError(f"run {path} records no store that exists here ({url!r}); pass --store STORE")
            given.append(url)
    elif isinstance(store, (str, os.PathLike, ActivationStore)):
        given = [store] * len(paths)
    else:
        given = list(store)
        if len(given) == 1:
            given = given * len(paths)
        elif len(given) != len(paths):
            raise OptionError(f"{len(given)} stores for {len(paths)} runs; pass one --store for all runs or one per run, in the runs' order")
    opened: dict[str, ActivationStore] = {}
    out = []
    for s in given:
        if isinstance(s, ActivationStore):
            out.append(s)
            continue
        key = str(s)
        if key not in opened:
            opened[key] = open_store(key)
        out.append(opened[key])
    return out


def _load(paths: list[Path], store: Any) -> list[_Run]:
    from ..dictionary import load
    from ..run import RunConfig

    configs = [RunConfig.read(p).to_dict() for p in paths]
    stores = _stores(paths, configs, store)
    runs = []
    for path, name, cfg, st in zip(paths, _names(paths), configs, stores):
        if int(cfg["d_in"]) != st.d_in:
            raise BadInputError(f"run {path} reads rows of width {cfg['d_in']} but store {st.url} has width {st.d_in}; pass the store of its site")
        runs.append(_Run(name, path, load(path), cfg, st))
    return runs
