"""Project-level checks: packaging metadata, environment.yml, CLI, layering and notebooks."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "medseg_tutorial"


def _normalise(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_reqs = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    assert {_normalise(d) for d in deps} == env_reqs


def test_pins_from_developers_guide() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "albumentations==2.0.8" in deps
    assert "segmentation-models-pytorch>=0.6,<0.7" in deps
    assert not any(d.startswith("albumentationsx") for d in deps)


def test_cli_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "medseg_tutorial.cli", "--version"], capture_output=True, text=True, check=True
    )
    from medseg_tutorial import __version__

    assert out.stdout.strip() == f"medseg-tutorial {__version__}"


# Layering like smp, as ARCHITECTURE.md writes it: a module may import only from its own layer or below,
# and no module may reach itself through imports at any depth (function-level imports included).
def _layers_from_architecture() -> dict[str, int]:
    """``{top-level module: layer}`` from the table under "## Layers" in ARCHITECTURE.md."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layer_of = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in cells[1].split(","):
                layer_of[name.strip().strip("`").removesuffix("/").removesuffix(".py")] = int(cells[0])
    return layer_of


LAYER_OF = _layers_from_architecture()


def test_architecture_lists_every_module() -> None:
    tops = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in PKG.rglob("*.py")} - {"__init__"}
    assert tops - set(LAYER_OF) == set(), "modules missing from the layer table in ARCHITECTURE.md"
    assert set(LAYER_OF) - tops - {"__init__"} == set(), "ARCHITECTURE.md lists modules that do not exist"


def test_no_import_cycles_at_any_depth() -> None:
    from medseg_tutorial.tools.shape import cycles, import_graph

    assert cycles(import_graph()) == []


def test_cycle_detector_finds_a_cycle() -> None:
    from medseg_tutorial.tools.shape import cycles

    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_never_imports_a_tool() -> None:
    from medseg_tutorial.tools.shape import import_graph

    offenders = {m: sorted(d for d in deps if d.startswith("medseg_tutorial.tools"))
                 for m, deps in import_graph().items()
                 if not m.startswith("medseg_tutorial.tools") and m not in ("medseg_tutorial.cli", "medseg_tutorial.notebook")}
    assert {m: d for m, d in offenders.items() if d} == {}


@functools.cache
def _graph() -> dict[str, set[str]]:
    from medseg_tutorial.tools.shape import import_graph

    return import_graph()


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_layering(path: Path) -> None:
    from medseg_tutorial.tools.shape import module_name

    me = module_name(path)
    top = me.split(".")[1] if "." in me else "__init__"
    for other in _graph()[me]:
        other_top = other.split(".")[1] if "." in other else "__init__"
        if other_top == top:
            continue
        assert LAYER_OF[other_top] <= LAYER_OF[top], (
            f"{path.relative_to(REPO)} (layer {LAYER_OF[top]}) imports {other} (layer {LAYER_OF[other_top]})"
        )


def _chapter_uses() -> dict[object, set[int]]:
    """Package functions and classes each chapter notebook calls: {object: {chapter numbers}}."""
    import importlib
    import inspect
    import json

    uses: dict[object, set[int]] = {}
    for nb in sorted((REPO / "book").glob("[0-9][0-9]_*.ipynb")):
        chapter = int(nb.name[:2])
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join(line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
                         if not line.lstrip().startswith(("%", "!")))
        modules, names = {}, []
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medseg_tutorial"):
                for alias in node.names:
                    try:
                        modules[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        names.append(getattr(importlib.import_module(node.module), alias.name))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                names.append(getattr(modules[node.value.id], node.attr, None))
        for obj in names:
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__.startswith("medseg_tutorial"):
                uses.setdefault(obj, set()).add(chapter)
    return uses


def _chapters_named(doc: str) -> set[int]:
    """The chapters a docstring's "Used in chapter(s) ..." sentences name: "3, 5 and 7", "3-7", "10"."""
    named: set[int] = set()
    for phrase in re.findall(r"[Uu]sed in chapters? ((?:\d+(?:-\d+)?(?:, | and |, and )?)+)", doc):
        for first, last in re.findall(r"(\d+)(?:-(\d+))?", phrase):
            named.update(range(int(first), int(last or first) + 1))
    return named


def test_chapters_named_reads_lists_and_ranges() -> None:
    assert _chapters_named("Used in chapters 3-5, 7 and 10.") == {3, 4, 5, 7, 10}
    assert _chapters_named("Used in chapter 8.") == {8}
    assert _chapters_named("no such sentence, chapter 9") == set()


def test_functions_the_chapters_use_name_their_chapters() -> None:
    """d2l's two-way link: the book imports the package, and the package says where the book uses it."""
    uses = _chapter_uses()
    assert len(uses) > 50  # the scan itself works
    missing = []
    for obj, chapters in uses.items():
        named = _chapters_named(obj.__doc__ or "")
        for chapter in sorted(chapters - named):
            missing.append(f"{obj.__module__}.{obj.__qualname__}: chapter {chapter}")
    assert not missing, "add 'Used in chapter N.' to these docstrings:\n" + "\n".join(missing)
