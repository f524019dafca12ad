"""Dependencies point one way: the testbeds use the method plugins, never the reverse, and only
through their public names (no ``_private`` module or name of another distribution)."""

from __future__ import annotations

import ast
from pathlib import Path

from tb_helpers import PLUGINS

#: The method plugins: they must run, and pass their own tests, without featureforge-testbeds.
METHODS = ("featureforge-sae", "featureforge-hf", "featureforge-moex", "featureforge-multifaceted")


#: What a reach into the testbeds looks like: the package in code (any import, lazy or not), the distribution in a dependency.
REACH = {".py": "featureforge_testbeds", ".toml": "featureforge-testbeds"}


def test_no_method_plugin_imports_or_depends_on_the_testbeds():
    hits = [f"{path.relative_to(PLUGINS)}:{n}" for dist in METHODS for path in sorted((PLUGINS / dist).rglob("*"))
            if path.suffix in REACH and ".egg-info" not in str(path)
            for n, line in enumerate(path.read_text().splitlines(), 1) if REACH[path.suffix] in line]
    assert not hits, "method plugins reach into the testbeds:\n" + "\n".join(hits)


def _private_imports(path: Path) -> list[str]:
    """``module.name`` of each import from another featureforge plugin that names a ``_private`` part."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            pairs = [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            pairs = [(a.name, "") for a in node.names]
        else:
            continue
        for module, name in pairs:
            if module.startswith("featureforge_") and not module.startswith("featureforge_testbeds"):
                if any(part.startswith("_") for part in [*module.split("."), name] if part):
                    out.append(f"{module}.{name}" if name else module)
    return out


def test_testbeds_import_only_public_names_of_the_method_plugins():
    sources = sorted((PLUGINS / "featureforge-testbeds" / "featureforge_testbeds").rglob("*.py"))
    assert sources
    bad = [f"{path.name}: {imp}" for path in sources for imp in _private_imports(path)]
    assert not bad, "the testbeds reach past the method plugins' public names:\n" + "\n".join(bad)
