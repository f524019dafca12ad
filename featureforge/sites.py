"""Hook sites of a torch model: find a module by its ``named_modules()`` name, read or replace its tensor.

Every source, live model and visualiser that hooks a model goes through here, so there is one
rule for naming a hook point (and one error when the name is wrong) and one way to read the
tensor a module gives (its output) or gets (its first input) and to put another in its place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from .errors import OptionError

__all__ = ["HookSite", "find_module", "first_tensor", "split_site_name", "with_first"]

Where = Literal["output", "input"]
#: ``fn(x)`` sees the site's tensor each forward pass; a tensor it returns replaces ``x``, ``None`` keeps it.
SiteFunction = Callable[[torch.Tensor], "torch.Tensor | None"]


def find_module(model: nn.Module, name: str, *, of: str = "the model", prefixes: Sequence[str] = (), hint: str = "",
                fix: str = "pass -o hook=NAME", error: type[Exception] = OptionError) -> tuple[str, nn.Module]:
    """(resolved name, module) of the module called ``name``, also looked for under each of ``prefixes``.

    Otherwise raises ``error`` in one line naming the five nearest names, then ``hint`` (e.g. the
    model's blocks) and ``fix``: "hook 'h.9' is not a module of 'gpt2'; nearest: h.0, h.1; pass -o hook=NAME".
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return name, modules[name]
    for prefix in prefixes:
        if prefix and f"{prefix}.{name}" in modules:
            return f"{prefix}.{name}", modules[f"{prefix}.{name}"]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    nearest = ", ".join(close) if close else "none close"
    raise error(f"hook {name!r} is not a module of {of}; nearest: {nearest}{hint}; {fix} (see model.named_modules())")


#: Suffixes that name a module's input or output in a site name ("transformer.h.0.mlp:input").
SITE_SUFFIXES: dict[str, Where] = {":input": "input", ":output": "output", ":in": "input", ":out": "output",
                                   ".input": "input", ".output": "output", ".in": "input", ".out": "output"}


def split_site_name(name: str, modules: Any = ()) -> tuple[str, "Where | None"]:
    """(module name, "input"/"output" or None) of a store site's name: ``MODULE`` alone, or
    ``MODULE`` with a suffix of :data:`SITE_SUFFIXES`. A suffix is only split off when what is
    left is a module (of ``modules``, when given) and the whole name is not one."""
    names = set(modules)
    if names and name in names:
        return name, None
    for suffix, where in SITE_SUFFIXES.items():
        stem = name[: -len(suffix)]
        if name.endswith(suffix) and stem and (not names or stem in names or any(n.endswith("." + stem) for n in names)):
            return stem, where
    return name, None


def first_tensor(value: Any) -> torch.Tensor:
    """The tensor a module gives or gets: itself, the first of a tuple/list, or of a model output."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "to_tuple"):
        return first_tensor(value.to_tuple())
    raise TypeError(f"hook point gives {type(value).__name__}, not a tensor")


def with_first(value: Any, tensor: torch.Tensor) -> Any:
    """``value`` with its (first) tensor replaced by ``tensor``."""
    if isinstance(value, torch.Tensor):
        return tensor
    if isinstance(value, tuple):
        return (tensor,) + tuple(value[1:])
    if isinstance(value, list):
        return [tensor] + list(value[1:])
    raise TypeError(f"cannot replace a {type(value).__name__} at the hook point")


@dataclasses.dataclass(frozen=True)
class HookSite:
    """A hook point: a module of the model (its resolved name) and whether its output or input is used."""

    name: str
    module: nn.Module = dataclasses.field(repr=False, compare=False)
    where: Where = "output"

    @classmethod
    def find(cls, model: nn.Module, name: str, where: Where = "output", **how: Any) -> "HookSite":
        """The site at module ``name`` of ``model``; ``how``: :func:`find_module`'s keywords."""
        if where not in ("output", "input"):
            raise OptionError(f"site {where!r} is neither output nor input; pass -o site=output or -o site=input")
        resolved, module = find_module(model, name, **how)
        return cls(resolved, module, where)

    @classmethod
    def find_site(cls, model: nn.Module, name: str, where: Where = "output", **how: Any) -> "HookSite":
        """The site a store site's ``name`` means (:func:`split_site_name`): its module, and the
        input or output its suffix says (else ``where``)."""
        module, said = split_site_name(name, (n for n, _ in model.named_modules()))
        return cls.find(model, module, said or where, **how)

    def attach(self, fn: SiteFunction) -> Any:
        """Call ``fn`` on the site's tensor each forward pass; returns the handle (``.remove()`` it).

        ``fn`` may raise to stop the forward pass there (a capture needs nothing after the site).
        """
        if self.where == "output":

            def out_hook(mod: nn.Module, args: Any, output: Any) -> Any:
                new = fn(first_tensor(output))
                return None if new is None else with_first(output, new)

            return self.module.register_forward_hook(out_hook)

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                new = fn(first_tensor(args[0]))
                return None if new is None else ((new,) + tuple(args[1:]), kwargs)
            key = "hidden_states" if "hidden_states" in kwargs else next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
            if key is None:
                raise TypeError("the hooked module received no tensor input")
            new = fn(kwargs[key])
            return None if new is None else (args, {**kwargs, key: new})

        return self.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    @contextlib.contextmanager
    def attached(self, fn: SiteFunction) -> Iterator["HookSite"]:
        """:meth:`attach` for the block only."""
        handle = self.attach(fn)
        try:
            yield self
        finally:
            handle.remove()
