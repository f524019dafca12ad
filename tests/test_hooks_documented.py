"""Meta-tests in the style of datasette: every hook is documented and tested, and the example
plugin printed in the guide is the one in ``docs/example-plugin`` (so the two cannot drift)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from featureforge import hookspecs

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "docs" / "example-plugin"

HOOKS = sorted(name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, "featureforge_spec"))


def signature(name: str) -> str:
    params = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(params)})"


def guide_headings() -> set[str]:
    headings = set()
    for line in GUIDE.read_text().splitlines():
        match = re.match(r"^#{1,6}\s+`?(.+?)`?\s*$", line)
        if match:
            headings.add(match.group(1))
    return headings


def test_there_are_hooks():
    assert HOOKS == sorted([
        "featureforge_register_commands",
        "featureforge_register_evaluators",
        "featureforge_register_sources",
        "featureforge_register_trainers",
    ])


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_exact_signature(hook):
    assert signature(hook) in guide_headings(), f"docs/plugins.md needs a heading '### {signature(hook)}'"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_reference_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert ":param " in doc and "Example::" in doc and "@featureforge.hookimpl" in doc


def test_hooks_have_tests():
    names = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_hook_"):
                names.add(node.name)
    missing = [f"test_hook_{hook}" for hook in HOOKS if f"test_hook_{hook}" not in names]
    assert not missing, f"every hook needs a test named test_hook_<hook>: missing {missing}"


def documented_example_files() -> dict[str, str]:
    """The code blocks of docs/plugins.md preceded by ``<!-- example-plugin: FILE -->``."""
    pattern = re.compile(r"<!-- example-plugin: (?P<file>\S+) -->\n```[a-z]*\n(?P<code>.*?)^```$", re.S | re.M)
    return {m["file"]: m["code"] for m in pattern.finditer(GUIDE.read_text())}


def test_guide_prints_the_example_plugin_verbatim():
    documented = documented_example_files()
    on_disk = sorted(
        str(p.relative_to(EXAMPLE)) for p in EXAMPLE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p) and "build" not in p.parts
    )
    assert sorted(documented) == on_disk, "every file of docs/example-plugin is printed in docs/plugins.md, and only those"
    for name, code in documented.items():
        assert code == (EXAMPLE / name).read_text(), f"docs/plugins.md's copy of {name} differs from docs/example-plugin/{name}"


def test_example_plugin_declares_its_entry_point():
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["featureforge"] == {"sine": "featureforge_sine"}
    assert (EXAMPLE / "featureforge_sine.py").exists()
