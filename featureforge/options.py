"""Typed plugin options: a dataclass per plugin, parsed from ``-o key=value`` strings.

A plugin declares ``Options`` as a dataclass; a docstring written under a field (as sparsify and
simple_parsing do) or ``field(metadata={"help": ...})`` becomes its help text. Values are parsed by
the field's annotation so ``-o k=32`` is an ``int`` and unknown keys are refused with the list of
valid ones.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from .errors import OptionError

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclasses.dataclass
class NoOptions:
    """Options of a plugin that takes none."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written directly under dataclass fields, read from the class source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            docs[f.name] = f.metadata["help"]
    return docs


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"comma list of {_type_name(args[0]) if args else 'str'}"
    return getattr(tp, "__name__", str(tp))


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: "an int", "a float"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def parse_value(text: str, tp: Any, key: str = "value") -> Any:
    """Parse one option string as annotation ``tp``; raise OptionError naming key and type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in {"none", "null", ""}:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg, key)
            except OptionError as exc:
                errors.append(str(exc))
        raise OptionError(f"option {key}={text!r} is not {_a(_type_name(tp))}")
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if str(choice) == text:
                return choice
        raise OptionError(f"option {key}={text!r} must be one of: {', '.join(map(str, choices))}")
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [str]
        items = [parse_value(part.strip(), args[0], key) for part in text.split(",") if part.strip()]
        return items if origin is list else tuple(items)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise OptionError(f"option {key}={text!r} is not a bool; use true or false")
    if tp in (int, float):
        try:
            value = float(text) if tp is float else int(text.replace("_", ""))
        except ValueError:
            raise OptionError(f"option {key}={text!r} is not {_a(tp.__name__)}") from None
        return value
    if tp is Path:
        return Path(text).expanduser()
    if tp is str or tp is Any:
        return text
    raise OptionError(f"option {key} has an unsupported type {_type_name(tp)}")


SUPPORTED_TYPES = "bool, int, float, str, Path, Any, a Literal of choices, X | None, list[X] or tuple[X, ...] of those"


def _supported(tp: Any) -> bool:
    """Whether ``parse_value`` can read an option annotated ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(arg is type(None) or _supported(arg) for arg in typing.get_args(tp))
    if origin is Literal:
        return True
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return not args or (len(set(args)) == 1 and typing.get_origin(args[0]) not in (list, tuple) and _supported(args[0]))
    return tp in (bool, int, float, str, Path, Any)


def _annotation(tp: Any) -> str:
    """An annotation as written: ``dict[str, float]``, ``Color`` (no module path, no ``<class>``)."""
    if typing.get_origin(tp) is None:
        return getattr(tp, "__name__", str(tp))
    return re.sub(r"(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", str(tp))  # typing.Optional[pkg.mod.Color] -> Optional[Color]


def unsupported_option_types(cls: type) -> str:
    """"" when every field of the options dataclass ``cls`` can be parsed, else a one-line why."""
    try:
        hints = _hints(cls)
    except Exception as exc:  # an annotation naming something that does not exist
        return f"{cls.__name__}'s annotations cannot be resolved ({type(exc).__name__}: {exc})"
    bad = [f"{f.name}: {_annotation(hints[f.name])}" for f in dataclasses.fields(cls) if f.init and not _supported(hints[f.name])]
    if not bad:
        return ""
    return f"option type not supported ({', '.join(bad)}); supported types: {SUPPORTED_TYPES}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def split_pairs(pairs: Iterable[str], example: str, *, flag: str = "-o", where: str = "") -> list[tuple[str, str]]:
    """``key=value`` strings as (key, value); keys stripped, dashes read as underscores.

    The one parser of ``-o``/``-t`` pairs (options, sweeps, loop settings); a pair without ``=``
    is a one-line OptionError showing ``flag example``.
    """
    items = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise OptionError(f"option {pair!r}{where} is not key=value; write e.g. {flag} {example}")
        items.append((key.strip().replace("-", "_"), text))
    return items


def parse_options(cls: type, pairs: Iterable[str] | Mapping[str, Any] | None = None, *, owner: str = "") -> Any:
    """Build an ``Options`` instance from ``key=value`` strings or a mapping of values.

    Strings are parsed by field type; other values are taken as they are (the Python API).
    """
    where = f" for {owner}" if owner else ""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    hints = _hints(cls)
    values: dict[str, Any] = {}
    if pairs is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(pairs, Mapping):
        items = list(pairs.items())
    else:
        items = split_pairs(pairs, f"{names[0] if names else 'key'}=VALUE", where=where)
    for key, raw in items:
        if key not in names:
            valid = ", ".join(names) if names else "none"
            raise OptionError(f"unknown option {key!r}{where}; valid options: {valid}")
        values[key] = parse_value(raw, hints[key], key) if isinstance(raw, str) else raw
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"invalid options{where}: {exc}") from None


def options_to_dict(options: Any) -> dict[str, Any]:
    """JSON-ready dict of an options instance (paths become strings, tuples lists)."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def describe_options(cls: type) -> list[dict[str, Any]]:
    """Name, type, default and help of every option, for ``featureforge plugins``."""
    hints = _hints(cls)
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        if isinstance(default, Path):
            default = str(default)
        rows.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default, "help": docs.get(f.name, "")})
    return rows


def evaluator_options(names: Sequence[str] | None, pairs: Iterable[str] | None, *, flag: str = "-o") -> dict[str, list[str]] | None:
    """``EVALUATOR.KEY=VALUE`` pairs grouped by evaluator: the one rule of ``featureforge evaluate -o``,
    ``featureforge train -t eval_options=...`` and the API.

    The result names every evaluator in ``names`` (in order) and every one an option names (an
    option naming an evaluator adds it); ``None`` when neither is given (the caller's defaults).
    """
    chosen: dict[str, list[str]] = {str(name): [] for name in names or ()}
    for pair in pairs or ():
        name, dot, setting = str(pair).partition(".")
        if not dot or "=" not in setting or "=" in name or not name:
            raise OptionError(f"{flag} {pair!r} is not EVALUATOR.KEY=VALUE; write e.g. {flag} downstream.max_sequences=64")
        chosen.setdefault(name, []).append(setting)
    return chosen or None
