"""The layering of ``trainers/``: methods stand on a floor of shared parts, nothing imports the loop
back, there is no import circle, and no in-function import hides one.

Floor: ``trainers.batch`` (records), ``trainers.runtime`` (builders), ``trainers.teachers`` (every
teacher scoring path), ``trainers.losses``, ``trainers.methods.base`` (the Method interface). Entry
points (``trainers/__init__.py``, ``cli.py``, ``__main__.py``) are the loop's callers and may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "trainers"
ENTRY_POINTS = {"trainers", "trainers.cli", "trainers.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, inside a function)`` for every ``trainers.*`` import of a file.

    ``from trainers.methods import x`` counts as ``trainers.methods.x`` when that is a module.
    """
    tree = ast.parse(path.read_text())
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_function) for a in child.names if a.name.startswith("trainers"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("trainers"):
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                    out.append((sub if is_module else child.module, in_function))
            visit(child, nested)

    visit(tree, False)
    return out


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def test_floor_modules_exist() -> None:
    for name in ("trainers.batch", "trainers.runtime", "trainers.teachers", "trainers.methods.base"):
        assert name in MODULES, name


def test_nothing_but_entry_points_imports_the_loop() -> None:
    offenders = [
        (name, target) for name, path in MODULES.items() if name not in ENTRY_POINTS
        for target, _ in _imports(path) if target == "trainers.loop"
    ]
    assert offenders == [], f"modules importing trainers.loop: {offenders}"


def test_methods_import_no_sibling_method() -> None:
    allowed = {"trainers.methods", "trainers.methods.base"}
    offenders = [
        (name, target) for name, path in MODULES.items()
        if name.startswith("trainers.methods.") and name != "trainers.methods.base"
        for target, _ in _imports(path)
        if target.startswith("trainers.methods") and target not in allowed
    ]
    assert offenders == [], f"methods importing a sibling method: {offenders}"


def test_floor_imports_no_method() -> None:
    floor = ("trainers.batch", "trainers.runtime", "trainers.teachers", "trainers.losses",
             "trainers.methods.base")
    offenders = [
        (name, target) for name in floor for target, _ in _imports(MODULES[name])
        if target.startswith("trainers.methods") or target == "trainers.loop"
    ]
    assert offenders == [], offenders


def test_no_import_cycle_and_no_cycle_dodging_import() -> None:
    """Module-level and in-function imports together form no cycle (packages' ``__init__`` and the
    method registry excepted: ``@register_method`` imports its package by design), and no module but
    an entry point imports a ``trainers`` module inside a function."""
    graph: dict[str, set[str]] = {}
    hidden: list[tuple[str, str]] = []
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        for target, in_function in _imports(path):
            if target in MODULES and MODULES[target].name != "__init__.py":
                graph.setdefault(name, set()).add(target)
            if in_function and name not in ENTRY_POINTS:
                hidden.append((name, target))
    assert hidden == [], f"in-function imports of trainers modules: {hidden}"

    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)


def test_the_checker_sees_a_planted_cycle(tmp_path: Path) -> None:
    """The import scanner itself: an in-function import of the loop is found."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from trainers.loop import train\n    return train\n")
    assert ("trainers.loop", True) in _imports(planted)
