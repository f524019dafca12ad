"""The plugin manager: built-in plugins plus every entry point in the group ``featureforge``.

Built-ins register first, then entry points one at a time in order of distribution name: a
plugin that fails to import, or whose hook raises, or that registers a name (or command) already
taken, is reported in one line naming its distribution, the first registration keeps the name,
and the others keep working (``FEATUREFORGE_STRICT_PLUGINS=1`` raises instead).
``FEATUREFORGE_PLUGINS`` (comma list of distribution or entry-point names; empty for none)
limits which entry-point plugins load.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import sys
import threading
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .options import describe_options
from .roles import ROLE_BASES, Plugin

ENTRY_POINT_GROUP = "featureforge"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "featureforge.builtin.synthetic",
    "featureforge.builtin.array",
    "featureforge.builtin.reconstruction",
    "featureforge.builtin.ground_truth",
)
CORE_DISTRIBUTION = "featureforge"


@dataclasses.dataclass
class Registration:
    """One registered class and the distribution it came from."""

    kind: str
    name: str
    cls: type[Plugin]
    distribution: str
    version: str


@dataclasses.dataclass
class CommandRegistration:
    """A click command a plugin added through ``featureforge_register_commands``."""

    name: str
    description: str
    distribution: str
    version: str


@dataclasses.dataclass
class LoadProblem:
    """A plugin that could not be loaded or registered, kept for ``featureforge plugins``."""

    distribution: str
    version: str
    message: str

    def line(self) -> str:
        return f"featureforge: plugin {self.distribution} {self.version} skipped: {self.message}"


class PluginRegistry:
    """Owns the pluggy manager and the name -> class tables, built lazily and once."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("featureforge")
        self.pm.add_hookspecs(hookspecs)
        self._origin: dict[int, tuple[str, str]] = {}
        self.problems: list[LoadProblem] = []
        self._tables: dict[str, dict[str, Registration]] | None = None
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

    def _problem(self, dist: str, version: str, message: str, exc: BaseException | None = None) -> None:
        problem = LoadProblem(dist, version, " ".join(message.split()))  # one line, whatever the exception's text
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
        tables: dict[str, dict[str, Registration]] = {kind: {} for kind in ROLE_BASES}
        hooks = {
            "source": self.pm.hook.featureforge_register_sources,
            "trainer": self.pm.hook.featureforge_register_trainers,
            "evaluator": self.pm.hook.featureforge_register_evaluators,
        }
        for kind, hook in hooks.items():
            # Oldest registration first (get_hookimpls() lists them in registration order), so a
            # built-in keeps its name against a plugin, and an earlier plugin against a later one.
            for impl in hook.get_hookimpls():
                dist, version = self._origin.get(id(impl.plugin), (impl.plugin_name, ""))
                register = self._make_register(kind, tables[kind], dist, version)
                try:
                    impl.function(register=register)
                except Exception as exc:
                    self._problem(dist, version, f"{hook.name} raised {type(exc).__name__}: {exc}", exc)
        return tables

    def _make_register(self, kind: str, table: dict[str, Registration], dist: str, version: str):
        base = ROLE_BASES[kind]

        def register(cls: type) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{cls!r} is not a subclass of featureforge.{base.__name__}")
            if not cls.name:
                raise TypeError(f"{cls.__name__} has no name; set the class attribute name = '...'")
            if not dataclasses.is_dataclass(cls.Options):
                raise TypeError(f"{cls.__name__}.Options must be a dataclass")
            if cls.name in table:
                other = table[cls.name]
                self._problem(dist, version, f"{kind} name {cls.name!r} is already registered by {other.distribution}; rename one of them")
                return
            table[cls.name] = Registration(kind, cls.name, cls, dist, version)

        return register

    # -- look-up ------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> type[Plugin]:
        table = self.tables()[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none installed"
            raise PluginError(f"unknown {kind} {name!r}; known {kind}s: {known} (see `featureforge plugins`)")
        return table[name].cls

    def registration(self, kind: str, name: str) -> Registration:
        self.get(kind, name)
        return self.tables()[kind][name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables()[kind])

    def describe(self) -> dict[str, Any]:
        """Everything ``featureforge plugins --json`` prints."""
        rows = []
        for kind, table in self.tables().items():
            for reg in sorted(table.values(), key=lambda r: r.name):
                rows.append(
                    {
                        "name": reg.name,
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


def _allowed_plugins() -> set[str] | None:
    value = os.environ.get("FEATUREFORGE_PLUGINS")
    if value is None:
        return None
    return {_normalize(part.strip()) for part in value.split(",") if part.strip()}


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


def reset_registry() -> None:
    """Forget loaded plugins (tests, or after changing ``FEATUREFORGE_PLUGINS``)."""
    global _registry
    with _registry_lock:
        _registry = None


def get_source(name: str) -> type:
    return get_registry().get("source", name)


def get_trainer(name: str) -> type:
    return get_registry().get("trainer", name)


def get_evaluator(name: str) -> type:
    return get_registry().get("evaluator", name)


def names(kind: str) -> Iterable[str]:
    return get_registry().names(kind)
