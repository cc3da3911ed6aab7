"""The package's import graph, read from the source: no cycles, no upward imports, imports at the top.

Every import counts, also those inside functions (lazy) and under `if TYPE_CHECKING:`: a cycle
broken by moving one import into a function body, or to the bottom of a file, is still a cycle.
Layers: the CLI (`hpdm_cli.cli`) sits on the drivers (`hpdm_cli.drivers`), which sit on the
engine (everything else); `hpdm_cli.eval` measures and never imports the sampler.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpdm_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The hpdm_cli modules that `name` imports anywhere in its source (a `from X import y` of a submodule y
    counts as importing X.y, of anything else as importing X)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_reader_sees_every_import():
    """The graph reader resolves relative, absolute, package and submodule imports (else the tests below are void)."""
    modules = _modules()
    app = _imports("hpdm_cli.cli.app", modules["hpdm_cli.cli.app"], modules)
    assert {"hpdm_cli.errors", "hpdm_cli.cli.console", "hpdm_cli.cli.prepare_cmd"} <= app
    run = _imports("hpdm_cli.data.prepare.run", modules["hpdm_cli.data.prepare.run"], modules)
    assert {"hpdm_cli.io", "hpdm_cli.data.prepare.journal", "hpdm_cli.data.shards", "hpdm_cli.io.lock"} <= run
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_no_upward_imports(graph):
    """The engine never imports a driver or the CLI; drivers never import the CLI; eval/ never imports sampling."""
    bad = []
    for name, targets in graph.items():
        for t in targets:
            if t.startswith("hpdm_cli.cli") and not name.startswith("hpdm_cli.cli") and name != "hpdm_cli.__main__":
                bad.append(f"{name} -> {t}")
            elif (t.startswith("hpdm_cli.drivers") and not name.startswith(("hpdm_cli.cli", "hpdm_cli.drivers"))
                  and name != "hpdm_cli.__main__"):
                bad.append(f"{name} -> {t}")
            elif name.startswith("hpdm_cli.eval") and t.startswith("hpdm_cli.sampling"):
                bad.append(f"{name} -> {t}")
    assert not bad, bad


def _late_imports(path: Path) -> list[int]:
    """Lines of module-level imports that follow other code (what a linter reports as E402)."""
    late, code_seen = [], False
    for i, node in enumerate(ast.parse(path.read_text(encoding="utf-8")).body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        imports = isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, ast.If) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body))
        if imports and code_seen:
            late.append(node.lineno)
        elif not (imports or docstring):
            code_seen = True
    return late


def test_imports_come_first():
    late = {str(p.relative_to(PACKAGE.parent)): lines for p in sorted(PACKAGE.rglob("*.py"))
            if (lines := _late_imports(p))}
    assert not late, late
