"""The layout keeps its shape: the import graph (read with ast, nothing imported) has the allowed directions only,
no cycle between packages, no source file over 400 lines, and at most 6 modules directly in daemon/.

Packages are odal.common, odal.serving, odal.recipe and each folder of daemon/; a module directly in daemon/
(main, cli, config) counts as its own package.  Imports under ``if TYPE_CHECKING:`` are annotations, not
dependencies, and are not counted."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"common": "odal.common", "daemon": "odal.daemon", "serving": "odal.serving", "recipe": "odal.recipe"}
FORBIDDEN = {  # importer prefix -> imported prefixes it must never reach
    "odal.common": ("odal.",),
    "odal.serving": ("odal.daemon", "odal.recipe"),
    "odal.daemon": ("odal.recipe",),
}


def _sources() -> list[tuple[Path, str]]:
    found = []
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            found.append((path, ".".join([package, *parts])))
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    if parts[1] == "daemon" and len(parts) >= 3:
        return ".".join(parts[:3])  # a daemon folder, or a module directly in daemon/
    return ".".join(parts[:2])


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported odal module, line) of every import in ``path``, also inside functions, but not TYPE_CHECKING's."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.startswith("odal.")]


@functools.cache
def _graph() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    known = {module for _, module in _sources()}
    for path, module in _sources():
        for name, line in _imports(path):
            while name not in known and "." in name:  # `from odal.daemon.store import db` names a module
                name = name.rsplit(".", 1)[0]
            if _package(name) != _package(module):
                edges.setdefault((_package(module), _package(name)), []).append(
                    f"{path.relative_to(REPO)}:{line} imports {name}")
    return edges


def test_serving_daemon_and_common_import_only_in_the_allowed_directions():
    wrong = [where for (importer, imported), places in _graph().items() for where in places
             if any(importer.startswith(src) and imported.startswith(dst)
                    for src, dsts in FORBIDDEN.items() for dst in dsts)]
    assert wrong == []
    # The recipe reads the daemon's queue through its one read-only query module, nothing else of the store.
    store = [where for (importer, imported), places in _graph().items() for where in places
             if importer == "odal.recipe" and imported == "odal.daemon.store" and "queue_query" not in where]
    assert store == []


def test_there_is_no_import_cycle_between_packages():
    edges = _graph()
    following: dict[str, set[str]] = {}
    for importer, imported in edges:
        following.setdefault(importer, set()).add(imported)
    cycles = []
    for start in sorted(following):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(following.get(node, ())):
                if nxt == start:
                    cycles.append(" -> ".join([*trail, start]) + f"  ({edges[node, start][0]})")
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert cycles == [], "\n".join(cycles)


def test_no_source_file_is_over_400_lines_and_daemon_keeps_at_most_6_modules_directly():
    long = [f"{path.relative_to(REPO)}: {n}" for path, _ in _sources()
            if (n := len(path.read_text().splitlines())) > 400]
    assert long == []
    direct = sorted(p.name for p in (REPO / "daemon").glob("*.py") if p.name != "__init__.py")
    assert len(direct) <= 6, direct
