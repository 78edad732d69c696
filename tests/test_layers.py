"""Layers: every import points down, and no modules import each other in a circle (DESIGN.md, "Layout … and
layers"). The order is the `LAYERS` table below: a layer may import its own layer and the ones under it.

How imports are read (statically, with `ast`: nothing is imported):
- every `import` / `from … import` of a module of axdata, axmethods or axeval counts, at module level or inside a
  function: a lazy import still runs and still ties the two modules together. So do `importlib.import_module(…)`
  calls with a literal name.
- `from package import name` depends on the submodule `package.name` where there is one, else on `package`.
- Importing `a.b.c` also runs the `__init__` of `a.b`: an edge to that package too, except to the importer's own
  parent packages (they are already running) and to an `__init__` that imports nothing of ours (it runs none of our
  code, so it can close no circle and reach no higher layer).
- Imports under `if TYPE_CHECKING:` never run. They are exempt from the circle check and from the layer order
  inside a package (an annotation may name a class of a higher layer), but not from the package order: axdata
  must not even name axmethods or axeval, nor axmethods axeval.

Rules: (1) packages in the order axdata < axmethods < axeval; (2) inside a package, runtime imports go to the same
or a lower layer; (3) no circles among runtime imports; (4) axeval's metric modules, pushed to the Hub as
self-contained Spaces, import only the plain-function modules their Space is built from, and those only each other,
`axdata.schema`'s constants and the Space's requirements.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("axdata", "axmethods", "axeval")  # bottom to top

# Per package: (layer, why it sits there, module prefixes). A prefix covers its submodules and the longest one wins
# (so `axmethods.inference.sampling` sits below the rest of `axmethods.inference`); a package's own name covers
# only its `__init__`. Every module must be covered.
LAYERS: dict[str, tuple[tuple[int, str, tuple[str, ...]], ...]] = {
    "axdata": (
        (0, "basics every step uses: errors, files, hashes, YAML, settings, the split schema, cards, embedded files",
         ("axdata", "axdata.errors", "axdata.io", "axdata.hashing", "axdata.safe_yaml", "axdata.validation",
          "axdata.settings", "axdata.schema", "axdata.cards", "axdata.embedded", "axdata.benchmark")),
        (1, "concepts, and the LLM client (its own subpackage), built on the basics",
         ("axdata.concepts", "axdata.llm")),
        (2, "making datasets: the generation steps ask the LLM about concepts; builders write and move the splits",
         ("axdata.generation", "axdata.builders")),
    ),
    "axmethods": (
        (0, "foundations: the model runtime (loading, hooks, activations, the decode loop and the chat backend over "
            "it), distributed helpers, factor grids, the result contract",
         ("axmethods", "axmethods.models", "axmethods.hooks", "axmethods.activations", "axmethods.distributed",
          "axmethods.factors", "axmethods.contract", "axmethods.inference.sampling", "axmethods.chat_backend")),
        (1, "interventions: the one arithmetic on the residual stream (add, clamp, project out, scale)",
         ("axmethods.interventions",)),
        (2, "the steering dictionary, whose steerer applies that arithmetic, and what reads dictionaries (output "
            "scores, AxBench conversion)",
         ("axmethods.dictionary", "axmethods.output_score", "axmethods.convert")),
        (3, "methods and trainers fit a result (each kind and its steerer beside its method or trainer); the pyvene "
            "bridge wraps their adapters",
         ("axmethods.methods", "axmethods.trainers", "axmethods.pyvene_bridge")),
        (4, "inference: latent scores and steered generations (eager / compiled) with any result",
         ("axmethods.inference",)),
        (5, "top: the registry names every method, `results` opens every result kind (`load_result`)",
         ("axmethods.registry", "axmethods.results")),
    ),
    "axeval": (
        (0, "plain functions (the metrics' math, the judge's protocol and templates) and the run-directory layout",
         ("axeval", "axeval.stats", "axeval.detection", "axeval.steering", "axeval.protocol",
          "axeval.judge_templates", "axeval.lexical", "axeval.errors", "axeval.rundir", "axeval.rules")),
        (1, "the judge, human curation, the evaluate metric modules and the evaluation modes over the plain functions",
         ("axeval.judge", "axeval.curation", "axeval.metrics", "axeval.modes")),
        (2, "the run config and the report that read judgements and scores",
         ("axeval.config", "axeval.report", "axeval.publish")),
        (3, "one pipeline: the runner and its stage functions",
         ("axeval.pipeline", "axeval.stages")),
        (4, "the CLI (top): each command only builds a stage's arguments",
         ("axeval.cli",)),
    ),
}
# The module the metric Spaces copy plain constants from (`axeval.metrics.hub`).
SPACE_CONSTANTS = "axdata.schema"


@dataclass(frozen=True)
class Import:
    """`importer` imports `imported` at `line`; kind: "runtime" (module level), "lazy" (inside a function),
    "typing" (under `if TYPE_CHECKING:`) or "package" (the `__init__` that importing a submodule runs)."""

    importer: str
    imported: str
    line: int
    kind: str

    @property
    def runs(self) -> bool:
        return self.kind != "typing"

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} → {self.imported} ({self.kind})"


# ----- reading the imports --------------------------------------------------------------------------------------


def find_modules(root: Path, packages: Sequence[str]) -> dict[str, Path]:
    """Dotted name → file of every module under `root/<package>`."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _raw_imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[list[str], int, bool, bool]]:
    """(candidate names, best first; line; lazy; typing) of every import statement in `tree`."""
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, lazy: bool, typing: bool) -> Iterator[tuple[list[str], int, bool, bool]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield [alias.name], node.lineno, lazy, typing
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                yield [f"{base}.{alias.name}", base], node.lineno, lazy, typing
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str) and (getattr(node.func, "attr", None) == "import_module" or
                                                         getattr(node.func, "id", None) == "import_module"):
            yield [node.args[0].value], node.lineno, lazy, typing
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, lazy, True)
            for child in node.orelse:
                yield from visit(child, lazy, typing)
            return
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner, typing)

    yield from visit(tree, False, False)


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def parse_file(path: Path) -> ast.Module:
    """`ast.parse` of `path`, asked again after CPython 3.11's spurious "AST constructor recursion depth mismatch"
    SystemError: the AST builder keeps its depth counter per interpreter, so another thread of the test process
    compiling at the same moment (a server or event-loop thread another test left) can unbalance it
    (python/cpython#106905). A real syntax problem raises the same way every time."""
    source = path.read_text(encoding="utf-8")
    for attempt in range(3):
        try:
            return ast.parse(source, filename=str(path))
        except SystemError as error:
            if "recursion depth mismatch" not in str(error) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def read_imports(root: Path, packages: Sequence[str]) -> tuple[dict[str, Path], list[Import]]:
    """Every module of `packages` under `root`, and every import between them (see the module docstring)."""
    modules = find_modules(root, packages)
    explicit: list[Import] = []
    for module, path in modules.items():
        tree = parse_file(path)
        for candidates, line, lazy, typing in _raw_imports(tree, module, path.name == "__init__.py"):
            target = next((found for name in candidates if (found := _resolve(name, modules))), None)
            if target is not None and target != module:
                explicit.append(Import(module, target, line, "typing" if typing else "lazy" if lazy else "runtime"))
    # An __init__ that imports nothing of ours runs none of our code: importing through it adds no edge.
    active = {edge.importer for edge in explicit if edge.runs and modules[edge.importer].name == "__init__.py"}
    implicit = [Import(edge.importer, package, edge.line, "package")
                for edge in explicit if edge.runs
                for package in _ancestors(edge.imported)
                if package in active and package != edge.importer and package not in _ancestors(edge.importer)]
    return modules, sorted(set(explicit + implicit), key=lambda e: (e.importer, e.imported, e.line, e.kind))


# ----- the checks -----------------------------------------------------------------------------------------------


def package_violations(imports: Iterable[Import], order: Sequence[str] = PACKAGES) -> list[str]:
    """Imports (TYPE_CHECKING ones too) from a lower package into a higher one."""
    rank = {package: i for i, package in enumerate(order)}
    return [f"{edge}: package {edge.importer.split('.')[0]} must not import {edge.imported.split('.')[0]} "
            f"(order: {' < '.join(order)})"
            for edge in imports
            if rank[edge.imported.split(".")[0]] > rank[edge.importer.split(".")[0]]]


def layer_of(module: str, prefixes: Mapping[str, int]) -> int | None:
    """The layer of the longest prefix of `module` in `prefixes`; a bare package name covers only itself."""
    if module in prefixes:
        return prefixes[module]
    for prefix in reversed(_ancestors(module)[1:]):
        if prefix in prefixes:
            return prefixes[prefix]
    return None


def layer_prefixes(layers: Mapping[str, Sequence[tuple[int, str, Sequence[str]]]] = LAYERS) -> dict[str, int]:
    return {prefix: number for rows in layers.values() for number, _, prefixes in rows for prefix in prefixes}


def layer_violations(imports: Iterable[Import], layer: Callable[[str], int | None]) -> list[str]:
    """Runtime imports inside one package from a lower layer into a higher one."""
    problems = []
    for edge in imports:
        if not edge.runs or edge.importer.split(".")[0] != edge.imported.split(".")[0]:
            continue
        low, high = layer(edge.importer), layer(edge.imported)
        if low is not None and high is not None and high > low:
            problems.append(f"{edge}: layer {low} imports layer {high}; move the code it needs down a layer, or "
                            "this code up (tests/test_layers.py LAYERS)")
    return problems


def circles(imports: Iterable[Import]) -> list[list[str]]:
    """The strongly connected components (more than one module) of the runtime imports, each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in imports:
        if edge.runs:
            graph.setdefault(edge.importer, set()).add(edge.imported)
            graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graphs are a few hundred modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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
            connect(node)
    return sorted(found)


def describe_circle(component: Sequence[str], imports: Iterable[Import]) -> str:
    """One concrete circle through the component's first module, edge by edge (where each import is)."""
    inside = set(component)
    edges: dict[str, list[Import]] = {}
    for edge in imports:
        if edge.runs and edge.importer in inside and edge.imported in inside:
            edges.setdefault(edge.importer, []).append(edge)
    start = component[0]
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to `start`
        node = frontier.pop(0)
        for edge in edges.get(node, []):
            if edge.imported == start:
                return f"{len(component)} modules ({', '.join(component)}); e.g. " + \
                    "; ".join(map(str, [*paths[node], edge]))
            if edge.imported not in paths:
                paths[edge.imported] = [*paths[node], edge]
                frontier.append(edge.imported)
    return ", ".join(component)


# ----- the project ----------------------------------------------------------------------------------------------


@cache
def project() -> tuple[dict[str, Path], list[Import]]:
    return read_imports(ROOT, PACKAGES)


def test_every_module_has_a_layer_and_every_prefix_a_module() -> None:
    modules, _ = project()
    prefixes = layer_prefixes()
    assert not [m for m in modules if layer_of(m, prefixes) is None], "add these modules to LAYERS"
    assert not [p for p in prefixes if not any(m == p or m.startswith(p + ".") for m in modules)], "stale LAYERS rows"
    for package, rows in LAYERS.items():
        assert all(prefix.split(".")[0] == package for _, _, prefixes in rows for prefix in prefixes)
        assert [number for number, _, _ in rows] == list(range(len(rows)))


def test_packages_import_downwards() -> None:
    assert package_violations(project()[1]) == []


def test_runtime_imports_follow_the_layers() -> None:
    prefixes = layer_prefixes()
    assert layer_violations(project()[1], lambda module: layer_of(module, prefixes)) == []


def test_no_import_circles() -> None:
    _, imports = project()
    assert [describe_circle(component, imports) for component in circles(imports)] == []


def _top_level_names(path: Path) -> set[str]:
    tree = parse_file(path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_metric_modules_import_only_their_plain_functions() -> None:
    """DESIGN: `axeval.metrics.*` modules import only axeval plain functions, evaluate, datasets (and what the Space
    installs): never axmethods or axdata, and through their plain functions nothing else of ours either."""
    from axeval.metrics.hub import METRIC_NAMES, REQUIREMENTS, SPACE_SOURCES

    modules, imports = project()
    installed = {re.split(r"[<>=!~\[ ;]", requirement)[0].replace("scikit-learn", "sklearn")
                 for requirement in REQUIREMENTS}
    allowed_outside = installed | set(sys.stdlib_module_names) | set(PACKAGES)
    for name in METRIC_NAMES:
        module = f"axeval.metrics.{name}.{name}"
        sources = set(SPACE_SOURCES[name])
        ours = {edge.imported for edge in imports if edge.importer == module and edge.kind != "package"}
        assert ours <= sources, f"{module} imports {sorted(ours - sources)}, not among its Space's sources"
        for source in sources:
            theirs = {edge.imported for edge in imports if edge.importer == source and edge.kind != "package"}
            assert theirs <= sources | {SPACE_CONSTANTS}, f"{source} (in the {name} Space) imports {theirs}"
        for path in [modules[module], *(modules[source] for source in sources)]:
            assert _top_level_names(path) <= allowed_outside, f"{path} imports what its Space does not install"


# ----- the checker can fail -------------------------------------------------------------------------------------


def test_the_checks_report_a_circle_an_upward_import_and_a_package_inversion() -> None:
    fake = [Import("p.a", "p.b", 1, "runtime"), Import("p.b", "p.c", 2, "runtime"), Import("p.c", "p.a", 3, "lazy"),
            Import("p.low", "p.high", 4, "lazy"), Import("p.high", "p.low", 5, "runtime"),
            Import("p.low", "p.top", 6, "typing"), Import("p.top", "p.low", 7, "runtime"),
            Import("q.x", "p.low", 8, "typing")]
    assert circles(fake) == [["p.a", "p.b", "p.c"], ["p.high", "p.low"]]  # the typing-only loop is none
    assert "p.c:3 → p.a (lazy)" in describe_circle(["p.a", "p.b", "p.c"], fake)
    layers = {"p.low": 0, "p.high": 1, "p.top": 2}
    problems = layer_violations(fake, layers.get)
    assert len(problems) == 1 and problems[0].startswith("p.low:4 → p.high (lazy): layer 0 imports layer 1")
    assert package_violations(fake, order=("p", "q")) == []
    [inverted] = package_violations(fake, order=("q", "p"))  # q below p: a TYPE_CHECKING import counts too
    assert inverted.startswith("q.x:8 → p.low (typing): package q must not import p")


def test_the_reader_sees_lazy_typing_and_package_imports(tmp_path: Path) -> None:
    files = {
        "top/__init__.py": "",
        "top/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from top import b\n"
                    "def f():\n    from top.b import thing\n",
        "top/b.py": "import importlib\nthing = importlib.import_module('top.sub.c')\n",
        "top/sub/__init__.py": "from top.sub import c\n",
        "top/sub/c.py": "from .. import a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _, imports = read_imports(tmp_path, ("top",))
    assert [str(edge) for edge in imports] == [
        "top.a:3 → top.b (typing)", "top.a:5 → top.b (lazy)", "top.b:2 → top.sub (package)",
        "top.b:2 → top.sub.c (runtime)", "top.sub:1 → top.sub.c (runtime)", "top.sub.c:1 → top.a (runtime)"]
    assert circles(imports) == [["top.a", "top.b", "top.sub", "top.sub.c"]]  # b runs sub/__init__, which imports c


@pytest.mark.parametrize("module, expected", [("axmethods.inference.sampling", 0), ("axmethods.inference.latent", 4),
                                              ("axmethods", 0), ("axmethods.unplaced", None)])
def test_the_longest_prefix_places_a_module(module: str, expected: int | None) -> None:
    assert layer_of(module, layer_prefixes()) == expected
