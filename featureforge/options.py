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
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

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


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
        items = []
        for pair in pairs:
            key, sep, text = pair.partition("=")
            if not sep:
                raise OptionError(f"option {pair!r}{where} is not key=value; write e.g. -o {names[0] if names else 'key'}=VALUE")
            items.append((key.strip().replace("-", "_"), text))
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
