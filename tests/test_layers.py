"""The layers of ../shared/DESIGN.md hold: no import cycle, each layer imports only those below.

Read from the source with ``ast``, imports inside functions included, so a
cycle hidden behind a lazy import fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "dbfleet"
#: Imported by (almost) every layer: the settings accessor, the errors, the SQL classifier.
BASE = {"conf", "exceptions", "sql", "topology"}
#: Layer -> the layers it may import (itself always). None: anything (the wiring).
ALLOWED: dict[str, set[str] | None] = {
    "topology": set(),
    "exceptions": set(),
    "sql": set(),
    "models": set(),
    "check_ids": set(),
    "values": set(),
    "conf": {"topology", "check_ids"},
    "vendors": {"exceptions", "sql"},
    "routing": BASE | {"replicas", "sharding"},
    "sharding": BASE | {"vendors", "transactions", "values"},
    "replicas": BASE | {"vendors"},
    "transactions": BASE | {"vendors", "routing", "replicas"},
    "migrating": BASE | {"routing", "vendors", "values"},
    "backends": {"vendors"},
    "analytics": BASE | {"vendors", "backends", "values"},
    "moving": BASE | {"vendors", "routing", "sharding", "transactions", "values", "analytics"},
    "checks": None,
    "testing": BASE | {"replicas", "sharding"},
    "admin_transactions": BASE | {"transactions", "routing"},
    "reports": None,
    "management": None,
    "migrations": None,
    "apps": None,
    "__init__": None,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, module: str) -> set[str]:
    """The dbfleet modules ``path`` imports (``from dbfleet.x import y`` counts ``dbfleet.x.y``
    when that is a module, else ``dbfleet.x``)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "dbfleet" and name in MODULES:
                found.add(name)
    found.discard(module)
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {module: imports(path, module) for module, path in MODULES.items()}


def test_the_graph_is_read() -> None:
    assert "dbfleet.routing" in GRAPH["dbfleet"]
    assert "dbfleet.topology" in GRAPH["dbfleet.conf"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, as a path that ends where it starts, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for following in sorted(graph.get(node, ())):
                if following == start:
                    return [*path, start]
                if following not in path and following not in done:
                    stack.append((following, [*path, following]))
        done.add(start)
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle() -> None:
    # A package's __init__ re-exports its modules; they must not import it back.
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layer_imports_only_what_it_may(module: str) -> None:
    allowed = ALLOWED[layer(module)]
    if allowed is None:
        return
    wrong = {
        imported
        for imported in GRAPH[module]
        if layer(imported) != layer(module) and layer(imported) not in allowed
    }
    assert not wrong, f"{module} (layer {layer(module)!r}) may not import {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) != "vendors"))
def test_vendor_branches_only_in_vendors(module: str) -> None:
    """``connection.vendor == "postgresql"`` belongs in ``vendors/``."""
    tree = ast.parse(MODULES[module].read_text())
    engines = {"postgresql", "mysql", "sqlite", "oracle"}
    branches = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(
            isinstance(side, ast.Attribute) and side.attr in ("vendor", "name")
            for side in (node.left, *node.comparators)
        )
        and any(
            isinstance(side, ast.Constant)
            and side.value in engines
            or isinstance(side, ast.Tuple | ast.Set | ast.List)
            and any(isinstance(e, ast.Constant) and e.value in engines for e in side.elts)
            for side in (node.left, *node.comparators)
        )
    ]
    assert not branches, f"{module} tests the vendor on lines {branches}; ask dbfleet.vendors"
