"""Print vla_export's internal import graph, counting imports inside functions, and its cycles.

    python tools/modgraph.py            # edges, then cycles (strongly connected components)
    python tools/modgraph.py --layers   # also the imports that go up the layer order, or between sibling tools

The layer order is the one tests/test_layers.py enforces.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "vla_export"

#: Lower layers first; a module may import only from its own layer or below. The tools (export, verify, bench,
#: serve) are siblings: one floor, over the shared services below them, and none imports another.
LAYERS = (
    ("base", ("vla_export", "vla_export.errors", "vla_export.lazy", "vla_export.fileio", "vla_export.progress",
              "vla_export.system", "vla_export.precision", "vla_export.choices", "vla_export.interrupts", "vla_export.stats",
              "vla_export.plots", "vla_export.schemas")),
    ("models", ("vla_export.models",)),
    ("data", ("vla_export.data",)),
    ("artifacts", ("vla_export.artifacts",)),
    ("backends", ("vla_export.backends",)),
    ("compare", ("vla_export.compare",)),
    ("runtime", ("vla_export.runtime",)),
    ("tools", ("vla_export.export", "vla_export.verify", "vla_export.bench", "vla_export.serve")),
    ("cli", ("vla_export.cli",)),
)
#: The layers whose packages are siblings: each package of one may import only itself and the layers below.
SIBLING_LAYERS = ("tools",)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _claim(module: str) -> tuple[int, str] | None:
    """(layer index, the prefix that claims ``module``), the longest prefix winning."""
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            # "vla_export" names the package's __init__ only; every other prefix covers its sub-modules.
            if (module == p or (p != "vla_export" and module.startswith(p + "."))) and len(p) > best:
                best, found = len(p), (i, p)
    return found


def layer_of(module: str) -> int:
    claim = _claim(module)
    if claim is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS")
    return claim[0]


def package_of(module: str) -> str:
    """The prefix (package) that claims ``module`` in its layer."""
    layer_of(module)
    return _claim(module)[1]


def imports(path: Path, modules: set[str]) -> dict[str, int]:
    """Internal modules ``path`` imports (anywhere in the file), with the line of the first import."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != me:
            found.setdefault(name, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("vla_export"):
                    add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("vla_export"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                add(full if full in modules else base, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, dict[str, int]]) -> list[tuple[str, str, int]]:
    return [(a, b, line) for a, deps in sorted(g.items()) for b, line in sorted(deps.items()) if layer_of(b) > layer_of(a)]


def sibling_imports(g: dict[str, dict[str, int]]) -> list[tuple[str, str, int]]:
    """Imports from one tool into another (export, verify, bench and serve share what is below them, not each other)."""
    siblings = {i for i, (name, _) in enumerate(LAYERS) if name in SIBLING_LAYERS}
    return [(a, b, line) for a, deps in sorted(g.items()) for b, line in sorted(deps.items())
            if layer_of(a) == layer_of(b) in siblings and package_of(a) != package_of(b)]


def main() -> int:
    g = graph()
    for a, deps in sorted(g.items()):
        if deps:
            print(f"{a} -> {', '.join(sorted(deps))}")
    found = cycles(g)
    print(f"\n{len(found)} cycle(s)")
    for c in found:
        print("  " + " <-> ".join(c))
    if "--layers" in sys.argv:
        up = upward(g)
        print(f"\n{len(up)} upward import(s)")
        for a, b, line in up:
            print(f"  {a}:{line} imports {b}")
        side = sibling_imports(g)
        print(f"\n{len(side)} import(s) between sibling tools")
        for a, b, line in side:
            print(f"  {a}:{line} imports {b}")
        print(f"\n{len(g)} modules, {sum(len(d) for d in g.values())} imports, {len(LAYERS)} layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
