"""The code's shape: modules of a few hundred lines, and no import cycle between modules
(imports under ``if TYPE_CHECKING:`` aside; function-level imports count)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "attacks", "probes", "reports")
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for c in child.orelse:
                    visit(c)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    found.add(a.name)
            elif isinstance(child, ast.ImportFrom):
                base = (here[: len(here) - child.level + 1] if child.level else [])
                mod = ".".join(base + ([child.module] if child.module else []))
                found.add(mod)
                for a in child.names:  # `from pkg import module`
                    if f"{mod}.{a.name}" in modules:
                        found.add(f"{mod}.{a.name}")
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def test_no_module_is_over_a_few_hundred_lines():
    long = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in _modules().items()}
    over = {n: k for n, k in long.items() if k > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    # a package's __init__ re-exporting its modules is not a dependency of those modules on
    # each other; a module importing its own package's __init__ is
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                dfs(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            dfs(n)
    real = [c for c in cycles if not _only_package_reexports(c)]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real[:5])


def _only_package_reexports(cycle: list[str]) -> bool:
    """A cycle that goes through a package __init__ only because the package re-exports a
    submodule that imports a sibling (pkg -> pkg.a -> pkg.b): importing ``pkg.b`` from
    ``pkg.a`` runs ``pkg/__init__`` first, but that is Python's package mechanics, not a
    dependency of ``pkg.a`` on the package's other modules. Cycles where a module imports
    its own package's ``__init__`` (``from . import x`` for a name defined there) are real."""
    edges = list(zip(cycle, cycle[1:]))
    if any(a.startswith(b + ".") for a, b in edges):  # a module importing its own package
        return False
    return any(b.startswith(a + ".") for a, b in edges)  # package -> its own submodule
