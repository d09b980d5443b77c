"""The rooms' dependencies point one way (DESIGN.md §1): ``vane/net`` does I/O only and imports
neither the engine, the observability room, the plugins nor the flow glue; ``vane/compile``
and ``vane/engine`` never import sockets, the daemon or the flow glue. Checked on the source,
imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

VANE = Path(__file__).resolve().parents[2] / "vane"

RULES = {
    "net": ("vane.engine", "vane.observe", "vane.plugins", "vane.flow", "vane.daemon", "vane.mgmt",
            "vane.compile", "vane.cli"),
    "engine": ("vane.net", "vane.flow", "vane.daemon", "vane.mgmt", "vane.plugins", "vane.compile", "vane.cli"),
    "compile": ("vane.net", "vane.flow", "vane.daemon", "vane.mgmt", "vane.cli"),
}


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("room", sorted(RULES))
def test_room_does_not_import_what_it_must_not(room):
    bad = []
    for path in sorted((VANE / room).rglob("*.py")):
        for line, module in imports(path):
            if module.startswith(RULES[room]):
                bad.append(f"{path.relative_to(VANE.parent)}:{line} imports {module}")
    assert bad == []


def test_net_has_no_relative_import_leaving_it():
    """A relative import cannot slip out of vane/net either."""
    for path in (VANE / "net").rglob("*.py"):
        tree = ast.parse(path.read_text())
        depth = len(path.relative_to(VANE / "net").parts) - 1
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level <= depth + 1, f"{path}: from {'.' * node.level}{node.module or ''}"
