"""The plugin manager: built-in plugins plus every entry point in the group ``featureforge``.

Built-ins register first, then entry points in order of distribution name. Load order never
decides who owns a name (docs/plugins.md, "Name resolution"):

- the core's own names are always the core's; a plugin registering one is refused;
- a name registered by two or more distributions belongs to none of them: one line names them
  all, and the user picks one by its qualified name ``DIST:NAME`` (every registration has one) or
  by ``FEATUREFORGE_PREFER`` (comma list of distributions that win such a clash, first first);
- an ``Options`` field of a type the option parser cannot read refuses that class at registration.

A plugin that fails to import, whose hook raises, or that is refused something is reported in one
line naming its distribution and saying what was and was not loaded; the other plugins keep
working (``FEATUREFORGE_STRICT_PLUGINS=1`` raises instead). ``FEATUREFORGE_PLUGINS`` (comma list of
distribution or entry-point names; empty for none) limits which entry-point plugins load.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import sys
import threading
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .options import describe_options, unsupported_option_types
from .roles import ROLE_BASES, Plugin

ENTRY_POINT_GROUP = "featureforge"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "featureforge.builtin.synthetic",
    "featureforge.builtin.array",
    "featureforge.builtin.reconstruction",
    "featureforge.builtin.ground_truth",
    "featureforge.builtin.identity",
)
CORE_DISTRIBUTION = "featureforge"


FLAGS = {"source": "--source", "trainer": "--trainer", "evaluator": "--evaluator"}


@dataclasses.dataclass
class Registration:
    """One registered class and the distribution it came from."""

    kind: str
    name: str
    cls: type[Plugin]
    distribution: str
    version: str

    @property
    def qualified(self) -> str:
        """``DIST:NAME``, the name that always means this registration."""
        return f"{_normalize(self.distribution)}:{self.name}"


@dataclasses.dataclass
class CommandRegistration:
    """A click command a plugin added through ``featureforge_register_commands``."""

    name: str
    description: str
    distribution: str
    version: str


@dataclasses.dataclass
class LoadProblem:
    """A plugin that could not be (wholly) loaded, kept for ``featureforge plugins``.

    ``status`` is "skipped" when nothing of the distribution was loaded, "partly loaded" when some
    of it was, or "clash" for a name several distributions registered (``distribution`` then
    names them all and the line says how to choose).
    """

    distribution: str
    version: str
    message: str
    status: str = "skipped"

    def line(self) -> str:
        if self.status == "clash":
            return f"featureforge: {self.message}"
        return f"featureforge: plugin {self.distribution} {self.version} {self.status}: {self.message}"


class PluginRegistry:
    """Owns the pluggy manager and the name -> class tables, built lazily and once."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("featureforge")
        self.pm.add_hookspecs(hookspecs)
        self._origin: dict[int, tuple[str, str]] = {}
        self.problems: list[LoadProblem] = []
        self._tables: dict[str, dict[str, Registration]] | None = None
        self._qualified: dict[str, dict[str, Registration]] = {}
        self._clashes: dict[str, dict[str, list[Registration]]] = {}
        self._commands: dict[str, CommandRegistration] = {}
        self._command_groups: set[int] = set()
        self._loaded = False
        self._lock = threading.RLock()

    # -- loading -----------------------------------------------------------------------------
    def register_plugin(self, plugin: Any, distribution: str, version: str = "", name: str | None = None) -> None:
        """Register a plugin object (module or instance) as coming from ``distribution``."""
        with self._lock:
            self.pm.register(plugin, name=name)
            self._origin[id(plugin)] = (distribution, version)
            self._tables = None

    def unregister_plugin(self, plugin: Any) -> None:
        with self._lock:
            self.pm.unregister(plugin)
            self._origin.pop(id(plugin), None)
            self._tables = None

    def load(self) -> None:
        """Load built-ins and entry points once; safe to call repeatedly."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            core_version = _version(CORE_DISTRIBUTION)
            for module_name in DEFAULT_PLUGINS:
                self.register_plugin(importlib.import_module(module_name), CORE_DISTRIBUTION, core_version, name=module_name)
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        """Entry points in order of distribution name, then entry-point name: the first wins a name."""
        allowed = _allowed_plugins()
        entries = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.value.split(":")[0]
            version = ep.dist.version if ep.dist is not None else ""
            entries.append((_normalize(dist), ep.name, dist, version, ep))
        for key, ep_name, dist, version, ep in sorted(entries, key=lambda e: e[:2]):
            if allowed is not None and key not in allowed and _normalize(ep_name) not in allowed:
                continue
            # Entry-point names are only unique within a distribution ("plugin" is common).
            plugin_name = f"{dist}:{ep_name}"
            if self.pm.has_plugin(plugin_name):
                continue
            try:
                plugin = ep.load()
                if self.pm.is_registered(plugin):  # two entry points naming one module
                    continue
                self.register_plugin(plugin, dist, version, name=plugin_name)
            except Exception as exc:  # a broken plugin must not take the CLI down
                self._problem(dist, version, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}", exc)

    def _problem(self, dist: str, version: str, message: str, exc: BaseException | None = None, status: str = "skipped") -> None:
        problem = LoadProblem(dist, version, " ".join(message.split()), status)  # one line, whatever the exception's text
        self.problems.append(problem)
        if os.environ.get("FEATUREFORGE_STRICT_PLUGINS") == "1":
            if exc is not None:
                raise exc
            raise PluginError(problem.line())
        print(problem.line(), file=sys.stderr)

    # -- registration tables ------------------------------------------------------------------
    def tables(self) -> dict[str, dict[str, Registration]]:
        with self._lock:
            self.load()
            if self._tables is None:
                self._tables = self._collect()
            return self._tables

    def _collect(self) -> dict[str, dict[str, Registration]]:
        found: dict[str, list[Registration]] = {kind: [] for kind in ROLE_BASES}
        refused: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (dist, version) -> [(what, why)]
        hooks = {
            "source": self.pm.hook.featureforge_register_sources,
            "trainer": self.pm.hook.featureforge_register_trainers,
            "evaluator": self.pm.hook.featureforge_register_evaluators,
        }
        for kind, hook in hooks.items():
            for impl in hook.get_hookimpls():
                dist, version = self._origin.get(id(impl.plugin), (impl.plugin_name, ""))
                before = len(found[kind])
                register = self._make_register(kind, found[kind], dist, version, refused)
                try:
                    impl.function(register=register)
                except Exception as exc:
                    if os.environ.get("FEATUREFORGE_STRICT_PLUGINS") == "1":
                        raise
                    what = f"its {kind}s" + (" after the error" if len(found[kind]) > before else "")
                    refused.setdefault((dist, version), []).append((what, f"{hook.name} raised {type(exc).__name__}: {exc}"))
        tables = {kind: self._resolve(kind, regs) for kind, regs in found.items()}
        self._report_refusals(refused, found)
        return tables

    def _make_register(self, kind: str, found: list[Registration], dist: str, version: str,
                       refused: dict[tuple[str, str], list[tuple[str, str]]]):
        base = ROLE_BASES[kind]

        def register(cls: type) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{cls!r} is not a subclass of featureforge.{base.__name__}")
            if not cls.name:
                raise TypeError(f"{cls.__name__} has no name; set the class attribute name = '...'")
            if not dataclasses.is_dataclass(cls.Options):
                raise TypeError(f"{cls.__name__}.Options must be a dataclass")
            why = ""
            if dist != CORE_DISTRIBUTION and any(r.name == cls.name and r.distribution == CORE_DISTRIBUTION for r in found):
                why = f"{kind} name {cls.name!r} is featureforge's own; rename it"
            elif any(r.name == cls.name and r.distribution == dist for r in found):
                why = f"{kind} name {cls.name!r} is registered twice by {dist}"
            elif bad := unsupported_option_types(cls.Options):
                why = f"{kind} {cls.name!r}: {bad}"
            if why:
                if os.environ.get("FEATUREFORGE_STRICT_PLUGINS") == "1":
                    raise PluginError(LoadProblem(dist, version, why).line())
                refused.setdefault((dist, version), []).append((f"{kind} {cls.name!r}", why))
                return
            found.append(Registration(kind, cls.name, cls, dist, version))

        return register

    def _resolve(self, kind: str, regs: list[Registration]) -> dict[str, Registration]:
        """Bare name -> registration where one distribution has it (or FEATUREFORGE_PREFER picks one)."""
        self._qualified[kind] = {r.qualified: r for r in regs}
        self._clashes[kind] = {}
        by_name: dict[str, list[Registration]] = {}
        for reg in regs:
            by_name.setdefault(reg.name, []).append(reg)
        prefer = _env_list("FEATUREFORGE_PREFER") or []
        table: dict[str, Registration] = {}
        for name, owners in by_name.items():
            core = [r for r in owners if r.distribution == CORE_DISTRIBUTION]
            chosen = core or sorted((r for r in owners if _normalize(r.distribution) in prefer),
                                    key=lambda r: prefer.index(_normalize(r.distribution)))
            if len(owners) == 1 or chosen:
                table[name] = (chosen or owners)[0]
                continue
            self._clashes[kind][name] = owners
            versions = _join([f"{r.distribution} {r.version}".strip() for r in owners])
            both = "both" if len(owners) == 2 else "all"
            line = (f"plugins {versions} {both} register {kind} {name!r}, so none of them gets that name; "
                    f"{clash_choice(kind, owners)}, or set FEATUREFORGE_PREFER={_normalize(owners[0].distribution)}")
            self._problem(", ".join(r.distribution for r in owners), "", line, status="clash")
        return table

    def _report_refusals(self, refused: dict[tuple[str, str], list[tuple[str, str]]], found: dict[str, list[Registration]]) -> None:
        for (dist, version), items in refused.items():
            loaded = [f"{r.kind} {r.name!r}" for regs in found.values() for r in regs if r.distribution == dist]
            if not loaded:
                self._problem(dist, version, "; ".join(why for _, why in items))
            else:
                missing = "; ".join(f"{what} ({why})" for what, why in items)
                self._problem(dist, version, f"loaded {', '.join(loaded)}; not loaded: {missing}", status="partly loaded")

    # -- look-up ------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> type[Plugin]:
        return self.registration(kind, name).cls

    def registration(self, kind: str, name: str) -> Registration:
        """The registration ``name`` (bare or ``DIST:NAME``) means; one-line PluginError otherwise."""
        table = self.tables()[kind]
        if name in table:
            return table[name]
        dist, sep, bare = name.partition(":")
        qualified = f"{_normalize(dist)}:{bare}"
        if sep and qualified in self._qualified[kind]:
            return self._qualified[kind][qualified]
        if name in self._clashes[kind]:
            owners = self._clashes[kind][name]
            raise PluginError(f"{kind} {name!r} is registered by {_join([r.distribution for r in owners])}; "
                              f"{clash_choice(kind, owners)}, or set FEATUREFORGE_PREFER to one of them")
        known = ", ".join(sorted([*table, *(r.qualified for regs in self._clashes[kind].values() for r in regs)])) or "none installed"
        raise PluginError(f"unknown {kind} {name!r}; known {kind}s: {known} (see `featureforge plugins`)")

    def registration_of(self, cls: type) -> Registration | None:
        """The registration of a class, whichever name (bare or qualified) chose it."""
        self.tables()
        for regs in self._qualified.values():
            for reg in regs.values():
                if reg.cls is cls:
                    return reg
        return None

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables()[kind])

    def describe(self) -> dict[str, Any]:
        """Everything ``featureforge plugins --json`` prints."""
        rows = []
        for kind, table in self.tables().items():
            listed = [(reg.name, reg) for reg in table.values()]
            listed += [(reg.qualified, reg) for regs in self._clashes[kind].values() for reg in regs]
            for name, reg in sorted(listed, key=lambda item: item[0]):
                rows.append(
                    {
                        "name": name,
                        "qualified": reg.qualified,
                        "kind": kind,
                        "distribution": reg.distribution,
                        "version": reg.version,
                        "description": reg.cls.description,
                        "options": describe_options(reg.cls.Options),
                    }
                )
        return {
            "plugins": rows,
            "commands": [dataclasses.asdict(c) for c in sorted(self._commands.values(), key=lambda c: c.name)],
            "distributions": self.distributions(),
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }

    def distributions(self) -> list[dict[str, Any]]:
        """Every loaded plugin module: its distribution, version and the hooks it implements."""
        self.load()
        out = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self._origin.get(id(plugin), (name, ""))
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
            out.append({"distribution": dist, "version": version, "plugin": name, "hooks": hooks})
        return out

    def add_commands(self, cli: Any) -> None:
        """Let plugins add click commands to ``cli``; a plugin may not replace an existing command."""
        with self._lock:
            self.load()
            if id(cli) in self._command_groups:  # already done for this group
                return
            self._command_groups.add(id(cli))
            self._add_commands(cli)

    def _add_commands(self, cli: Any) -> None:
        for impl in self.pm.hook.featureforge_register_commands.get_hookimpls():
            dist, version = self._origin.get(id(impl.plugin), (impl.plugin_name, ""))
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self._problem(dist, version, f"featureforge_register_commands raised {type(exc).__name__}: {exc}", exc)
            for name, command in list(cli.commands.items()):
                if name in before and before[name] is not command:
                    cli.commands[name] = before[name]
                    owner = self._commands[name].distribution if name in self._commands else "featureforge"
                    self._problem(dist, version, f"command {name!r} is already provided by {owner}; rename one of them")
                elif name not in before:
                    help_line = command.get_short_help_str(limit=200) if hasattr(command, "get_short_help_str") else ""
                    self._commands[name] = CommandRegistration(name, help_line, dist, version)


def _normalize(name: str) -> str:
    """A distribution name as pip compares them: ``FeatureForge_Sine`` == ``featureforge-sine``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_list(variable: str) -> list[str] | None:
    """A comma list of distribution names from the environment, normalised; None when unset."""
    value = os.environ.get(variable)
    if value is None:
        return None
    return [_normalize(part.strip()) for part in value.split(",") if part.strip()]


def _allowed_plugins() -> set[str] | None:
    allowed = _env_list("FEATUREFORGE_PLUGINS")
    return None if allowed is None else set(allowed)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def clash_choice(kind: str, owners: list[Registration]) -> str:
    """How to pick one of the distributions that all register one name."""
    flag = FLAGS.get(kind, kind)
    return "choose one with " + " or ".join(f"{flag} {r.qualified}" for r in owners)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


_registry: PluginRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> PluginRegistry:
    """The process-wide registry, loading plugins on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = PluginRegistry()
        return _registry
