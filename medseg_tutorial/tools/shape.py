"""The shape of the ``medseg_tutorial`` package: its import graph, its cycles and its size.

    python -m medseg_tutorial.tools.shape            # a table
    python -m medseg_tutorial.tools.shape --json     # the same as JSON

``tests/test_project.py`` checks the import graph against the layers written in ARCHITECTURE.md.

* package lines: every line of every ``.py`` file in the package;
* core lines: the modules a student reads next to the chapters (everything but ``tools/`` and the
  notebook/CLI/course glue listed in :data:`NOT_CORE`);
* exported names: the entries of every module's ``__all__``, added up;
* longest function: by source lines (decorators and docstring included);
* import cycles: strongly connected groups of modules in the package's own import graph, counting
  imports inside functions too (a lazy import hides a cycle from Python, not from a reader).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

__all__ = ["measure"]

PKG = Path(__file__).resolve().parents[1]
# Modules outside the student's reading path (product glue and tools), relative to the package.
# The core is what the issue names: data, losses, metrics, models, strategies, optim, config, train,
# evaluate (with the small modules they stand on); whatever sits in data/ or models/ counts as core.
# The chapter helpers that read committed tables (results, and the statistics under its comparison
# sentences) are not on that path: a student reads them as chapter code, not as the pipeline.
NOT_CORE = ("tools/", "cli.py", "__main__.py", "course.py", "bench.py", "notebook.py", "exercises.py",
            "experiment.py", "results.py", "stats.py", "viz.py", "cnn.py", "leakage.py", "_version.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Package modules that ``path`` imports, anywhere in the file (resolved to real modules)."""
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            if t in known:
                found.add(t)
                break
            while "." in t and t not in known:
                t = t.rsplit(".", 1)[0]
            if t in known:
                found.add(t)
                break
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    known = {module_name(f) for f in files}
    graph = {module_name(f): imports_of(f, known) for f in files}
    # a package's __init__ importing its own submodules is not a cycle a reader must untangle
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def measure() -> dict[str, object]:
    files = sorted(PKG.rglob("*.py"))
    lines = {f: len(f.read_text().splitlines()) for f in files}
    core = [f for f in files if not str(f.relative_to(PKG)).startswith(NOT_CORE)]
    exported = 0
    longest = (0, "")
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                exported += len(node.value.elts) if isinstance(node.value, (ast.List, ast.Tuple)) else 0
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                if n > longest[0]:
                    longest = (n, f"{f.relative_to(PKG.parent)}:{node.lineno} {node.name}")
    return {
        "package_lines": sum(lines.values()),
        "core_lines": sum(lines[f] for f in core),
        "core_modules": len(core),
        "exported_names": exported,
        "longest_function_lines": longest[0],
        "longest_function": longest[1],
        "import_cycles": cycles(import_graph()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    m = measure()
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        for key, value in m.items():
            print(f"{key:24s} {value if key != 'import_cycles' else (len(value), value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
