"""No module-level import circle in the core: modules import each other one way only.

Read from the source (top-level ``import``/``from`` statements; ``TYPE_CHECKING`` blocks and
imports inside functions are left out, as they do not run when a module loads). A package's
``__init__`` importing its own modules is the package's face, not a circle, and so is the root
package every module lives in.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "featureforge"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in known and m != name and m != "featureforge"}


def test_the_core_has_no_module_level_import_circle():
    paths = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {name: _imports(path, name, set(paths)) for name, path in paths.items()}
    circles: list[str] = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in stack:
                circles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in done:
                done.add(dep)
                visit(dep, stack + [dep], done)

    for name in sorted(graph):
        visit(name, [name], {name})
    assert len(graph) > 40, "the import graph was not read"
    assert not circles, "module-level import circles:\n" + "\n".join(sorted(set(circles)))
