"""Imports go one way: each module imports atbsn's own modules only from its floor or below (the floors are
the module map in docs/architecture.md), there is no import cycle, and imports of atbsn's modules sit at the
top of each file.

Imports only for annotations (under ``if TYPE_CHECKING:``) are not imports at run time and are left out; the
method registry's discovery of the files in ``atbsn/methods`` (``importlib`` by name) is the one import that
runs upwards, by design: it is what lets a method be one file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import doc_section

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "atbsn"


def _module(path: Path) -> str:
    """``src/atbsn/methods/apbsn.py`` -> ``methods.apbsn``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "atbsn"


def floors() -> dict[str, int]:
    """Module -> floor, from the numbered list of the module map."""
    section = doc_section("Module map")
    out = {}
    for number, line in re.findall(r"^(\d+)\. (.*)$", section, re.M):
        for name in re.findall(r"`([\w/]+\.py)`", line):
            out[_module(PACKAGE / name)] = int(number)
    return out


def _runtime_imports(tree: ast.Module) -> list[tuple[ast.stmt, bool]]:
    """(import node, at the top of the file) for every import that runs, skipping TYPE_CHECKING blocks."""
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, top))
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                        ast.Try, ast.If, ast.With)))

    visit(tree, True)
    return found


def own_imports(path: Path, source: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported atbsn module, line, at the top) for each import of atbsn's own modules in ``path`` (or in
    ``source``, read as that file)."""
    here = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    out = []
    for node, top in _runtime_imports(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1] if node.level > 1 else list(here)
            if node.module:
                base = [*base, *node.module.split(".")]
            targets = [".".join(base)]
            if not node.module:  # "from . import methods": the names are modules
                targets = [".".join([*base, a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("atbsn"):
            targets = [node.module.removeprefix("atbsn").lstrip(".") or "atbsn"]
        elif isinstance(node, ast.Import):
            targets = [a.name.removeprefix("atbsn").lstrip(".") for a in node.names if a.name.startswith("atbsn")]
        else:
            continue
        out += [(t or "atbsn", node.lineno, top) for t in targets]
    return out


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _known(name: str, table: dict[str, int]) -> str:
    """An imported name that is a module of the table (``from . import __version__`` imports the package)."""
    while name not in table and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in table else "atbsn"


def test_every_module_has_a_floor_in_the_readme():
    table = floors()
    assert {_module(p) for p in _sources()} == set(table)


def test_imports_run_down_the_floors():
    table = floors()
    upward = []
    for path in _sources():
        me = _module(path)
        for target, line, _ in own_imports(path):
            target = _known(target, table)
            if target != me and table[target] > table[me]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({me}, floor {table[me]}) imports {target} "
                              f"(floor {table[target]})")
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    table = floors()
    graph = {_module(p): {_known(t, table) for t, _, _ in own_imports(p)} - {_module(p)} for p in _sources()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_imports_of_atbsn_modules_are_at_the_top_of_each_file():
    inside = [f"{p.relative_to(ROOT)}:{line} imports {t}" for p in _sources() for t, line, top in own_imports(p)
              if not top]
    assert not inside, "\n".join(inside)


def test_the_checker_sees_upward_hidden_and_annotation_only_imports():
    """The checks can fail: an import inside a function, from a higher floor, is found with its place; one under
    TYPE_CHECKING is not an import at run time."""
    path = PACKAGE / "tiling.py"
    source = (path.read_text() + "\n\nif TYPE_CHECKING:\n    from .engine import Trainer\n\n\n"
              "def _late():\n    from .cli import main\n    return main\n")
    found = [(t, top) for t, _, top in own_imports(path, source)]
    assert ("cli", False) in found and not any(t == "engine" for t, _ in found)
    assert floors()["cli"] > floors()["tiling"]
    assert ("errors", True) in [(t, top) for t, _, top in own_imports(PACKAGE / "methods" / "__init__.py")]
