"""The import layering of the installed package, read statically from the source (issue 18).

Layers, lowest first: the library `mmoe_inspect/`, the rendering `reports/` (installs as
`mmoe_inspect.reports`), the Typer app `cli/` (installs as `mmoe_inspect.cli`). A layer never imports
one above it, and no module imports itself back through others: a cycle makes import order matter,
pulls heavy modules into light ones, and hides which module owns what.

The graph is built with `ast` over every .py file of the three trees (folders mapped to module names by
pyproject.toml's `package-dir`), relative imports resolved. Imports inside functions count (a lazy
import that closes a cycle is still a cycle; it only moves the failure to run time); imports under
`if TYPE_CHECKING:` do not (they never run). `from pkg import name` is an edge to `pkg.name` when that
is a module, else to `pkg`. The implicit import of parent packages is not an edge (every submodule
would otherwise be in a cycle with the `__init__` that imports it). The lazy exports of
`mmoe_inspect/__init__.py` (`importlib.import_module` on first attribute access) are not edges either.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli is a dependency there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TOP = "mmoe_inspect"


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` at `where` (path:line, for the failure message)."""

    source: str
    target: str
    where: str


def package_dirs() -> dict[str, Path]:
    """Installed package name -> source folder, from pyproject.toml's setuptools package-dir."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    dirs = {name: ROOT / folder for name, folder in mapping.items()}
    assert TOP in dirs, mapping
    return dirs


def module_files(dirs: dict[str, Path]) -> dict[str, Path]:
    """Every module of the package: dotted name -> file. A folder mapped on its own (cli/, reports/)
    is left out of the walk of its parent's folder."""
    modules: dict[str, Path] = {}
    for package, folder in dirs.items():
        skip = {d.resolve() for p, d in dirs.items() if p != package and p.startswith(package + ".")}
        for path in sorted(folder.rglob("*.py")):
            if any(s == path.resolve() or s in path.resolve().parents for s in skip):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere in the file (functions included), except under
    `if TYPE_CHECKING:` (its `else:` branch runs and counts)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                walk(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in: the longest known module prefix (None outside the package)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(dirs: dict[str, Path], root: Path = ROOT) -> tuple[dict[str, Path], list[Edge]]:
    """Every module (name -> file) and every import edge between two of them."""
    modules = module_files(dirs)
    aliases = {folder.name: package for package, folder in dirs.items() if "." in package}
    edges: list[Edge] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        relative = path.relative_to(root)
        for node in _imports(tree):
            where = f"{relative}:{node.lineno}"
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = module.split(".")
                    base = base if is_package else base[:-1]  # the package the module sits in
                    base = base[: len(base) - (node.level - 1)]
                    assert base, f"{where}: a relative import above the top package"
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                for alias in node.names:
                    sub = f"{prefix}.{alias.name}"
                    targets.append(sub if sub in modules else prefix)
            for target in targets:
                head, _, rest = target.partition(".")
                if head in aliases and target not in modules:  # `import reports...`: the folder's own name
                    target = ".".join(filter(None, [aliases[head], rest]))
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    edges.append(Edge(module, owner, where))
    return modules, edges


def strongly_connected(nodes: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those with a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in succ.get(node, ()):
                    found.append(sorted(component))
    return found


def cycle_paths(component: list[str], edges: list[Edge], limit: int = 12) -> list[list[Edge]]:
    """Short cycles inside one component: for each edge u -> v in it, v's shortest way back to u."""
    members = set(component)
    inner = [e for e in edges if e.source in members and e.target in members]
    first: dict[tuple[str, str], Edge] = {}
    for e in inner:
        first.setdefault((e.source, e.target), e)
    succ: dict[str, list[str]] = {}
    for s, t in first:
        succ.setdefault(s, []).append(t)
    cycles: dict[frozenset[tuple[str, str]], list[Edge]] = {}
    for (u, v), edge in sorted(first.items()):
        previous = {v: v}
        queue = deque([v])
        while queue and u not in previous:
            node = queue.popleft()
            for nxt in succ.get(node, ()):
                if nxt not in previous:
                    previous[nxt] = node
                    queue.append(nxt)
        if u not in previous:
            continue
        path = [u]
        while path[-1] != v:
            path.append(previous[path[-1]])
        path.reverse()  # v ... u
        steps = [edge] + [first[(a, b)] for a, b in itertools.pairwise(path)]
        cycles.setdefault(frozenset((e.source, e.target) for e in steps), steps)
    return sorted(cycles.values(), key=len)[:limit]


def describe_cycles(components: list[list[str]], edges: list[Edge]) -> str:
    lines = [f"{len(components)} import cycle(s) among the package's modules:"]
    for component in components:
        lines.append(f"- strongly connected: {', '.join(component)}")
        for steps in cycle_paths(component, edges):
            lines.append("    " + " -> ".join([steps[0].source] + [e.target for e in steps]))
            lines.extend(f"        {e.source} -> {e.target}  ({e.where})" for e in steps)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge]]:
    return import_graph(package_dirs())


PLANTED = {
    "lib/__init__.py": "from .a import A\n",
    "lib/a.py": "A = 1\nimport json\n",
    "lib/sub/__init__.py": "",
    "lib/sub/b.py": (
        "from typing import TYPE_CHECKING\n"
        "from .. import a\n"  # relative, a submodule by name
        "from ..sub import c as _c\n"  # relative, a submodule through its package
        "if TYPE_CHECKING:\n    from lib.d import D\nelse:\n    from lib import A\n"  # only `else` runs
        "def f():\n    from lib.sub.c import C\n    return C\n"  # lazy: still an edge
    ),
    "lib/sub/c.py": "C = 3\n",
    "lib/d.py": "import lib.ui.view\n",  # upward, into the separately mapped folder
    "ui/__init__.py": "",
    "ui/view.py": "from lib.sub import b\nimport ui\n",  # `import ui`: the folder's own name
}


def test_the_reader_on_a_planted_package(tmp_path: Path) -> None:
    """The reader itself, on a planted package: relative and lazy imports are edges, `TYPE_CHECKING`
    ones are not, a separately mapped folder gets its installed name (a reader that dropped edges
    would let the tests below pass on anything)."""
    for name, text in PLANTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    modules, edges = import_graph({"lib": tmp_path / "lib", "lib.ui": tmp_path / "ui"}, tmp_path)
    assert set(modules) == {
        "lib",
        "lib.a",
        "lib.d",
        "lib.sub",
        "lib.sub.b",
        "lib.sub.c",
        "lib.ui",
        "lib.ui.view",
    }
    assert {(e.source, e.target) for e in edges} == {
        ("lib", "lib.a"),
        ("lib.sub.b", "lib.a"),
        ("lib.sub.b", "lib.sub.c"),
        ("lib.sub.b", "lib"),
        ("lib.d", "lib.ui.view"),
        ("lib.ui.view", "lib.sub.b"),
        ("lib.ui.view", "lib.ui"),
    }
    lazy = [e for e in edges if e.source == "lib.sub.b" and e.target == "lib.sub.c"]
    assert sorted(e.where for e in lazy) == ["lib/sub/b.py:3", "lib/sub/b.py:9"]


def test_the_graph_sees_the_whole_package(graph) -> None:
    modules, edges = graph
    assert {"mmoe_inspect", "mmoe_inspect.inspector", "mmoe_inspect.cli.main", "mmoe_inspect.reports"} <= set(
        modules
    )
    assert not any(".cli.cli" in name or ".reports.reports" in name for name in modules)
    assert {e.source for e in edges} >= {"mmoe_inspect.cli.main", "mmoe_inspect.reports"}
    assert len(edges) > len(modules)


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    edges = [
        Edge("a", "b", "a.py:1"),
        Edge("b", "c", "b.py:1"),
        Edge("c", "a", "c.py:9"),
        Edge("c", "d", "c.py:2"),
    ]
    succ: dict[str, list[str]] = {}
    for e in edges:
        succ.setdefault(e.source, []).append(e.target)
    components = strongly_connected(["a", "b", "c", "d"], succ)
    assert components == [["a", "b", "c"]]
    assert "a -> b -> c -> a" in describe_cycles(components, edges)


def test_no_import_cycle(graph) -> None:
    modules, edges = graph
    succ: dict[str, list[str]] = {}
    for e in edges:
        succ.setdefault(e.source, []).append(e.target)
    components = strongly_connected(sorted(modules), succ)
    assert components == [], describe_cycles(components, edges)


def test_no_layer_imports_a_layer_above_it(graph) -> None:
    """The library imports neither `cli` nor `reports`; `reports` does not import `cli`."""
    _, edges = graph

    def layer(name: str) -> int:
        return (
            2 if name.startswith("mmoe_inspect.cli") else 1 if name.startswith("mmoe_inspect.reports") else 0
        )

    upward = [e for e in edges if layer(e.target) > layer(e.source)]
    assert upward == [], "\n".join(f"{e.source} -> {e.target}  ({e.where})" for e in upward)


TRACE = """
import sys, traceback

class Watch:  # records who imports the inspector, then lets the normal finders load it
    chains = []

    def find_spec(self, name, path=None, target=None):
        if name == "mmoe_inspect.inspector":
            frames = [f for f in traceback.extract_stack() if "importlib" not in f.filename]
            self.chains.append(["/".join(f.filename.split("/")[-2:]) + f":{f.lineno}" for f in frames[:-1]])
        return None

watch = Watch()
sys.meta_path.insert(0, watch)
import {module}
assert "{module}" in sys.modules
print("LOADED" if "mmoe_inspect.inspector" in sys.modules else "CLEAN")
for chain in watch.chains:
    print("  via " + " -> ".join(chain))
"""


@pytest.mark.parametrize("light", ["mmoe_inspect.causal", "mmoe_inspect.attribution"])
def test_causal_and_attribution_do_not_load_the_inspector(light: str) -> None:
    """The analyses sit below `inspect()`: importing them (in a fresh interpreter) loads no inspector."""
    done = subprocess.run(
        [sys.executable, "-c", TRACE.replace("{module}", light)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("CLEAN"), f"import {light} loaded mmoe_inspect.inspector:\n{done.stdout}"
