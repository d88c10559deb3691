"""The house's rules, checked on the import graph of ``src/funcgrad`` built with ``ast``.

Every ``import`` counts as an arrow, at module level or inside a function (a lazy import
is still a dependency); only ``if TYPE_CHECKING:`` blocks are left out. The rules:

* no import cycle;
* diagnostics (``primitives``, ``registry``, ``testing``, ``_jaxpr``, ``explain``,
  ``flow``) never import training (``train``, ``nn``, ``data``, ``checkpoint``,
  ``parallel``, ``experiments``, ``cli``);
* ``primitives`` imports only ``primitives``;
* only ``cli`` imports ``experiments``, and nothing imports ``cli``;
* no module is over 500 lines, and no function over 80.

The checker runs on planted violations in a synthetic tree too, so it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "funcgrad"
DIAGNOSTICS = {"primitives", "registry", "testing", "_jaxpr", "explain", "flow"}
TRAINING = {"train", "nn", "data", "checkpoint", "parallel", "experiments", "cli"}
MAX_LINES = 500
MAX_FUNCTION_LINES = 80
#: The top floors, bottom up: only a floor above may import them (the root package
#: ``funcgrad`` loads lazily and counts as the ground).
TOP = ["", "experiments", "cli"]


def _modules(root: Path, package: str) -> dict[str, Path]:
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join([package, *parts])] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (function-level imports included)."""
    modules = _modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                hits = [_resolve(a.name, modules) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")
                    anchor = anchor[:len(anchor) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import name``: the submodule pkg.name if there is one, else pkg
                hits = [_resolve(f"{base}.{a.name}", modules) for a in node.names]
            graph[mod].update(h for h in hits if h is not None and h != mod)
    return graph


def _area(mod: str, package: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def check_tree(root: Path, package: str = "funcgrad") -> list[str]:
    """Every broken rule of the house, one line each."""
    graph = import_graph(root, package)
    problems = [f"import cycle: {' <-> '.join(c)}" for c in _cycles(graph)]
    for src, targets in sorted(graph.items()):
        a = _area(src, package)
        for dst in sorted(targets):
            b = _area(dst, package)
            if a in DIAGNOSTICS and b in TRAINING:
                problems.append(f"diagnostics -> training: {src} imports {dst}")
            if a == "primitives" and b != "primitives":
                problems.append(f"upward from primitives: {src} imports {dst}")
            if b in TOP and a != b and TOP.index(a if a in TOP else "") < TOP.index(b):
                problems.append(f"upward into {b}: {src} imports {dst}")
    for mod, path in sorted(_modules(root, package).items()):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"module over {MAX_LINES} lines: {mod} has {lines}")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # docstring included
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"function over {MAX_FUNCTION_LINES} lines: "
                                    f"{mod}.{node.name} has {length}")
    return problems


def test_the_house_keeps_its_rules():
    assert check_tree(SRC) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph(SRC, "funcgrad")
    assert "funcgrad.train" in graph["funcgrad.cli.train"]  # imported inside run()
    assert "funcgrad.primitives" in graph["funcgrad.nn"]


# ------------------------------------------------------------ planted violations
def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", "primitives/__init__.py": "",
                      "primitives/relu.py": "import math\n", "flow/__init__.py": "",
                      "train.py": "from .primitives import relu\n", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_clean_synthetic_tree_passes(tmp_path):
    assert check_tree(_plant(tmp_path, {}), "pkg") == []


@pytest.mark.parametrize("files,expected", [
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from . import a\n"},
     "import cycle: pkg.a <-> pkg.b"),
    ({"flow/stats.py": "def f():\n    from ..train import fit\n"},
     "diagnostics -> training: pkg.flow.stats imports pkg.train"),
    ({"primitives/relu.py": "from ..flow import stats\n", "flow/stats.py": ""},
     "upward from primitives: pkg.primitives.relu imports pkg.flow.stats"),
    ({"big.py": "x = 1\n" * 501}, "module over 500 lines: pkg.big has 501"),
    ({"long.py": "def f():\n" + "    x = 1\n" * 80},
     "function over 80 lines: pkg.long.f has 81"),
    ({"cli.py": "", "nn.py": "def f():\n    from . import cli\n"},
     "upward into cli: pkg.nn imports pkg.cli"),
], ids=["cycle", "diagnostics-to-training", "upward-from-primitives", "too-long",
        "long-function", "into-cli"])
def test_planted_violations_are_found(tmp_path, files, expected):
    assert expected in check_tree(_plant(tmp_path, files), "pkg")


def test_type_checking_imports_are_not_arrows(tmp_path):
    root = _plant(tmp_path, {"flow/stats.py": "from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    from ..train import fit\n"})
    assert check_tree(root, "pkg") == []
