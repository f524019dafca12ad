"""Sweep expansion: ``k=16,32,64`` on a trainer option becomes one member config per value.

Every member is then trained in one pass over the data (see ``_loop.py``).
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
