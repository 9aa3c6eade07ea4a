"""The package's import graph has no cycle, read statically (``ast``) from its source files.

Two graphs are checked, both must be acyclic:

* **module level**: every ``import`` a module runs when it is imported, including those under
  ``if TYPE_CHECKING:`` (a cycle that only type checkers follow is still a cycle in the design);
* **all imports**: the above plus imports deferred into function bodies.

An edge goes to the module an import names: ``from pcp_lens import _tl`` is an edge to
``pcp_lens._tl``, ``from pcp_lens import Site`` (a re-export) an edge to ``pcp_lens`` itself.
The implicit import of a parent package (Python runs ``pcp_lens/__init__.py`` before any
submodule) is not an edge, or every module would sit in a cycle with ``pcp_lens``.
"""

from __future__ import annotations

import ast
import importlib
import itertools
from pathlib import Path

import pytest

import pcp_lens

ROOT = Path(pcp_lens.__file__).parent

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graphs(root: Path) -> tuple[Graph, Graph]:
    """The (module-level, all-imports) graphs of the package in folder ``root``."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top: Graph = {m: {} for m in files}
    every: Graph = {m: {} for m in files}

    def target(name: str) -> str | None:
        while name and name not in files:  # `import a.b.c` of a module a.b -> a.b
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deferred: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                deferred |= {id(n) for n in ast.walk(fn) if n is not fn}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + is_pkg]
                    base = ".".join([*anchor, *([base] if base else [])])
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    names.append(sub if sub in files else base)
            for name in names:
                t = target(name)
                if t is None or t == mod:
                    continue
                every[mod].setdefault(t, node.lineno)
                if id(node) not in deferred:
                    top[mod].setdefault(t, node.lineno)
    return top, every


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``None`` if it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, {})):
            if state.get(t) == 1:
                return [*path[path.index(t) :], t]
            if t not in state and (found := visit(t)) is not None:
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def _describe(cycle: list[str], graph: Graph) -> str:
    return (
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle))
        + f" -> {cycle[-1]}"
    )


@pytest.mark.parametrize("which", ["module level", "all imports"])
def test_pcp_lens_has_no_import_cycle(which):
    top, every = import_graphs(ROOT)
    graph = top if which == "module level" else every
    assert len(graph) > 40 and "pcp_lens.pcp.fit" in graph  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle ({which}): {_describe(cycle, graph)}"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path / "pkg"


def test_the_walk_finds_cycles_through_every_import_form(tmp_path):
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\n",
            "pkg/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from .sub import b\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": "def f():\n    from .. import c\n",
            "pkg/c.py": "import pkg.a.x\n",
        },
    )
    top, every = import_graphs(root)
    assert top == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.sub.b": 3},
        "pkg.sub": {},
        "pkg.sub.b": {},
        "pkg.c": {"pkg.a": 1},
    }
    assert every["pkg.sub.b"] == {"pkg.c": 2}
    assert find_cycle(top) is None
    assert find_cycle(every) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]


def test_a_re_export_from_the_package_is_an_edge_to_it(tmp_path):
    root = _package(
        tmp_path,
        {"pkg/__init__.py": "from pkg.a import A\n", "pkg/a.py": "from pkg import B\nA = 1\n"},
    )
    top, _ = import_graphs(root)
    assert find_cycle(top) == ["pkg", "pkg.a", "pkg"]


# every public name the former modules pcp_lens.pcp (pcp.py) and pcp_lens.pca (pca.py) offered
FORMER_NAMES = {
    "pcp": [
        "FORMAT",
        "FORMAT_VERSION",
        "DirectionKind",
        "HookFn",
        "PCAFit",
        "PCAMethod",
        "PCPReplacement",
        "SitePCP",
        "factors_from_scales",
        "fit_pca",
        "fit_pcp",
        "least_squares_scales",
        "pcp_site",
        "pcp_sites",
        "reference_code_directions",
        "scales_from_factors",
    ],
    "pca": [
        "PCAFit",
        "PCAMethod",
        "as_f64",
        "check_finite_values",
        "factors_from_scales",
        "fit_pca",
        "least_squares_scales",
        "pcp_site",
        "pcp_sites",
        "reference_code_directions",
        "scales_from_factors",
    ],
    "pcp_storage": ["DIRECTION_KINDS", "FORMAT", "FORMAT_VERSION", "TENSOR_FIELDS"],
    "pcp_hooks": ["FactoredMap", "site_hooks"],
}


@pytest.mark.parametrize("former", sorted(FORMER_NAMES))
def test_every_former_pcp_name_imports_from_the_package(former):
    pcp = importlib.import_module("pcp_lens.pcp")
    missing = [n for n in FORMER_NAMES[former] if not hasattr(pcp, n)]
    assert missing == []
    assert set(FORMER_NAMES[former]) <= set(pcp.__all__)


@pytest.mark.parametrize("former", ["pca", "pcp_hooks", "pcp_storage"])
def test_the_former_top_level_modules_are_gone(former):
    assert not (ROOT / f"{former}.py").exists()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"pcp_lens.{former}")
