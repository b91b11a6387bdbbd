"""The package's layering rules as code (docs/architecture.md): every import of the package's own modules,
at module level or inside a function, goes to the importer's own layer or a lower one; no import cycles
between modules or between top-level packages; no private name imported from another module; no two
modules share a file name."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PKG = "napari_histoexpr"

#: lowest first; a name is the first path component under the package (a subpackage or a module)
LAYERS = (
    {"__init__", "_version", "errors", "metrics", "steps", "utils", "files"},
    {"io"},
    {"data", "datasets"},
    {"models"},
    {"infer"},
    {"train", "segment", "slide_level", "evaluation", "encoders"},
    {"layerdata", "demo", "_reader", "_sample_data", "_writer"},
    {"widgets", "cli", "viewer_app"},
)


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package folder ``root``."""
    out = {}
    for p in root.rglob("*.py"):
        parts = (PKG,) + p.relative_to(root).with_suffix("").parts
        out[".".join(parts).removesuffix(".__init__")] = p
    return out


def imports(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """``(edges, private)``: the package modules each module imports (anywhere in it), and the private
    names imported across modules (``"importer<-name"``)."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != PKG:
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    dst = full if full in mods else target
                    if dst in mods and dst != m:
                        edges[m].add(dst)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and full not in mods \
                            and dst != m:
                        private.append(f"{m}<-{alias.name}")
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return edges, private


def head(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(module: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if head(module) in names), None)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def violations(root: Path) -> dict[str, list]:
    """Every broken rule of the package folder ``root``, by kind (all lists empty: none)."""
    edges, private = imports(root)
    upward, unknown = [], set()
    for m, outs in edges.items():
        for d in outs:
            a, b = layer_of(m), layer_of(d)
            if a is None or b is None:
                unknown.update(x for x, lv in ((m, a), (d, b)) if lv is None)
            elif b > a:
                upward.append(f"{m.removeprefix(PKG + '.')}->{d.removeprefix(PKG + '.')}")
    packages: dict[str, set[str]] = {}
    for m, outs in edges.items():
        for d in outs:
            if head(m) != head(d):
                packages.setdefault(head(m), set()).add(head(d))
    names = Counter(p.name for p in root.rglob("*.py") if p.name != "__init__.py")
    return {"module cycles": cycles(edges), "package cycles": cycles(packages), "upward imports": sorted(upward),
            "modules in no layer": sorted(unknown), "private imports": sorted(private),
            "shared file names": sorted(n for n, k in names.items() if k > 1)}
