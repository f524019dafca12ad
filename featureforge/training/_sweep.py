"""Sweep expansion: ``k=16,32,64`` on a trainer option becomes one member config per value, and
``--seed 0,1,2`` one member per initialisation seed.

Every member is then trained in one pass over the data (see ``_loop.py``). Seed members share the
batches (the data order is the first seed's), as sparsify trains a list of init seeds at once, so
they differ only in their initialisation: what ``featureforge compare`` asks of a seed comparison.
"""

from __future__ import annotations

import itertools
import typing
from typing import Any, Mapping, Sequence

from ..options import split_pairs


def expand_sweep(options_cls: type, options: Mapping[str, Any] | Sequence[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """Split ``k=16,32,64`` (or a list value in the API) on a scalar field into one config per value."""
    if options is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(options, Mapping):
        items = list(options.items())
    else:
        items = split_pairs(options, "key=VALUE")
    hints = typing.get_type_hints(options_cls)
    axes: list[tuple[str, list[Any]]] = []
    for key, value in items:
        tp = hints.get(key)
        is_list_field = tp is not None and (typing.get_origin(tp) in (list, tuple) or tp in (list, tuple))
        if isinstance(value, str) and "," in value and not is_list_field:
            axes.append((key, [v.strip() for v in value.split(",") if v.strip()]))
        elif isinstance(value, (list, tuple)) and not is_list_field:
            axes.append((key, list(value)))
        else:
            axes.append((key, [value]))
    combos = list(itertools.product(*[values for _, values in axes])) or [()]
    swept = [key for key, values in axes if len(values) > 1]
    out = []
    for combo in combos:
        chosen = {key: value for (key, _), value in zip(axes, combo)}
        label = ",".join(f"{key}={chosen[key]}" for key in swept)
        out.append((label, chosen))
    return out


def expand_seeds(seed: Any) -> list[int]:
    """``0``, ``"0,1,2"`` or ``[0, 1, 2]`` as a list of distinct integer seeds (at least one)."""
    from ..errors import OptionError

    if seed is None:
        return [0]
    values = seed.split(",") if isinstance(seed, str) else list(seed) if isinstance(seed, (list, tuple)) else [seed]
    try:
        seeds = [int(str(v).strip()) for v in values if str(v).strip()]
    except ValueError:
        raise OptionError(f"--seed {seed!r} must be an integer or a comma list of integers (--seed 0,1,2)") from None
    if not seeds or len(set(seeds)) < len(seeds):
        raise OptionError(f"--seed {seed!r} must name distinct seeds, e.g. --seed 0,1,2")
    return seeds


def with_seeds(variants: list[tuple[str, Any]], seeds: list[int]) -> tuple[list[tuple[str, Any]], list[int]]:
    """Each variant once per seed (labels gain ``seed=S`` when there are several); the seed of each."""
    if len(seeds) == 1:
        return variants, seeds * len(variants)
    out, member_seeds = [], []
    for label, value in variants:
        for s in seeds:
            out.append((f"{label},seed={s}" if label else f"seed={s}", value))
            member_seeds.append(s)
    return out, member_seeds
