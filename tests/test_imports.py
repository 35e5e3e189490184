"""The project's modules import each other without cycles, and `python -m captioner` works.

The rule: an import of a project module is an edge wherever it is written (module level, inside
a function, in a `__main__` block). Function-level imports keep start-up fast, but they still
run; when one closes a loop, which module is half-initialised depends on which was imported
first (cli -> pipelines -> train -> cli did). Not edges: imports under `if TYPE_CHECKING:`
(never run) and the implicit import of a module's parent packages, which every submodule
import makes and which `from . import name` in a package's own `__init__` does not reverse.
`from package import name` is an edge to `package.name` when that is a module, else to the
package's `__init__`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("captioner", "pipelines")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking_block(node):
            yield from (n for child in node.orelse for n in _imports_of(child))
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else known(base))
        graph[name] = targets - {None, name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_project_has_no_import_cycles():
    found = cycles(import_graph(project_modules()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "captioner"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = '0'\n")
    (package / "a.py").write_text("def f():\n    from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    (package / "d.py").write_text("from . import c\n")
    (tmp_path / "pipelines").mkdir()
    graph = import_graph(project_modules(tmp_path))
    assert graph["captioner.a"] == {"captioner.sub.b"} and graph["captioner.sub.b"] == {"captioner.a"}
    assert cycles(graph) == [["captioner.a", "captioner.sub.b"]]  # c -> d is only for the type checker


def test_python_m_captioner_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "captioner", "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: captioner") and "train" in result.stdout


@pytest.mark.parametrize("argv, code", [(["train", "/nonexistent.yaml"], 1), ([], 2)])
def test_python_m_captioner_exits_with_the_cli_codes(argv, code):
    result = subprocess.run([sys.executable, "-m", "captioner", *argv], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT.parent)
    assert result.returncode == code, result.stderr
