"""Project-level checks: packaging metadata, environment.yml, CLI, layering and notebooks."""

from __future__ import annotations

import ast
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


# Layering like smp: a module may import only from its own layer or below.
LAYERS = {
    0: {"_paths", "_version", "data", "losses", "metrics", "activations", "viz"},
    1: {"models", "strategies", "optim", "exercises", "cnn", "leakage"},
    2: {"config", "trainer", "distributed", "evaluate", "results"},
    3: {"experiment", "bench", "cli", "course", "notebook", "__init__", "__main__"},
}
LAYER_OF = {name: level for level, names in LAYERS.items() for name in names}


def _top_module(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imported_package_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    rel_parts = path.relative_to(PKG).parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("medseg_tutorial"):
                parts = node.module.split(".")[1:]
            elif node.level > 0:
                # Resolve "from ..x import y" against the file's package path.
                base = list(rel_parts[:-1])[: len(rel_parts) - node.level]
                parts = base + (node.module.split(".") if node.module else [a.name for a in node.names])
            else:
                continue
            if parts:
                # "from . import __version__" names an attribute of the package itself.
                is_module = (PKG / parts[0]).is_dir() or (PKG / f"{parts[0]}.py").is_file()
                found.add(parts[0] if is_module else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("medseg_tutorial."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_layering(path: Path) -> None:
    me = _top_module(path)
    if me not in LAYER_OF:
        pytest.fail(f"{path.relative_to(REPO)} is in no layer; add it to LAYERS in tests/test_project.py")
    for other in _imported_package_modules(path) - {me}:
        assert other in LAYER_OF, f"{path.name} imports unknown module {other}"
        assert LAYER_OF[other] <= LAYER_OF[me], (
            f"{path.relative_to(REPO)} (layer {LAYER_OF[me]}) imports {other} (layer {LAYER_OF[other]})"
        )
