"""A hosted runtime's install: the built wheel with the slim ``notebook`` extra, in a fresh venv.

Colab and Binder run each chapter's first cell, which installs ``medseg-tutorial[notebook]`` when the
package is missing. That extra must hold what the chapters need beyond the runtime dependencies and
none of the book toolchain (Jupyter Book 1 and Sphinx 7 would replace the runtime's own packages).

The quick checks below read pyproject.toml and the notebooks. The install test builds the wheel,
installs it with the extra named in chapter 1's first cell into a fresh virtual environment (PyTorch
included: minutes and several GB, so it runs only with ``MEDSEG_INSTALL_TEST=1``; ``.ci/run`` runs it as
its own step) and runs chapter 1's first two cells there, offline, on the real MSD Hippocampus.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
EXTRA = "notebook"
BOOK_TOOLCHAIN = ("jupyter-book", "sphinx", "ghp-import")  # distribution names, prefixes for sphinx-*
INSTALL_ENV = "MEDSEG_INSTALL_TEST"
PIP_LINE = re.compile(r"^\s*%pip install .*\"medseg-tutorial\[(?P<extra>[\w,-]+)\] @ git\+https://", re.M)


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _code_cells(nb: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


def _without_magics(source: str) -> str:
    """The cell as plain Python: IPython magics and shell lines dropped (the package is installed)."""
    return "\n".join(ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!")))


def _chapter_imports() -> set[str]:
    """Top-level third-party modules that the chapters' code cells import, the optional ones aside."""
    mods = set()
    for nb in CHAPTERS:
        for source in _code_cells(nb):
            for node in ast.walk(ast.parse(_without_magics(source))):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"medseg_tutorial"} - set(OPTIONAL_IMPORTS)


# Imported by a chapter only when installed (the cell checks find_spec first and says what it skipped).
OPTIONAL_IMPORTS = {"acsconv": "chapter 10: our ACSConv against the authors' package",
                    "segment_anything": "chapter 10: SAM / MedSAM, when their weights are present"}


# --- quick checks (every `make test`) -------------------------------------------------------------

def test_notebook_extra_is_slim_and_the_book_extra_builds_on_it() -> None:
    extras = _extras()
    slim = {_name(r) for r in extras[EXTRA]}
    assert slim, f"the {EXTRA} extra is empty"
    assert not {n for n in slim if n.startswith(BOOK_TOOLCHAIN) or n in ("ipykernel", "jupyterlab", "notebook")}
    assert set(extras[EXTRA]) <= set(extras["book"]), "the book extra must list the notebook extra's lines"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_first_cell_installs_the_notebook_extra(nb: Path) -> None:
    first = _code_cells(nb)[0]
    assert [m["extra"] for m in PIP_LINE.finditer(first)] == [EXTRA], f"{nb.name}: first cell's %pip line"
    assert "except ImportError" in first and "notebook.setup(" in first


def test_notebook_extra_covers_what_the_chapters_import() -> None:
    """Each third-party module a chapter imports comes from a runtime dependency or the slim extra."""
    from importlib.metadata import packages_distributions

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"][EXTRA]}
    dists = packages_distributions()
    missing = {m: dists.get(m) for m in _chapter_imports()
               if not declared & {_name(d) for d in dists.get(m, [])}}
    assert missing == {}, "chapters import modules that neither the dependencies nor the notebook extra provide"


# --- the real install (MEDSEG_INSTALL_TEST=1) ------------------------------------------------------

def _run(cmd: list[str | Path], timeout: float, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the package sources (no stale build/ of the checkout can slip in)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "medseg_tutorial", src / "medseg_tutorial",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "-w", tmp / "dist", src], timeout=300, env=_clean_env())
    (wheel,) = (tmp / "dist").glob("medseg_tutorial-*.whl")
    return wheel


@pytest.mark.install
@pytest.mark.skipif(os.environ.get(INSTALL_ENV) != "1",
                    reason=f"installs PyTorch into a fresh venv (minutes); set {INSTALL_ENV}=1 (CI does)")
def test_wheel_with_notebook_extra_runs_chapter_1_in_a_fresh_venv(tmp_path: Path, shared_root: Path) -> None:
    from medseg_tutorial import __version__

    cells = _code_cells(BOOK / "01_introduction.ipynb")
    (extra,) = [m["extra"] for m in PIP_LINE.finditer(cells[0])]  # what a hosted runtime would install
    assert "notebook.setup(" in cells[0]
    hippocampus = shared_root / "msd" / "Task04_Hippocampus"
    assert hippocampus.is_dir(), "the setup cell must find MSD Hippocampus, not download it"

    times: dict[str, float] = {}
    start = time.monotonic()
    wheel = _build_wheel(tmp_path)
    times["build wheel"] = time.monotonic() - start

    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    try:
        start = time.monotonic()
        _run([sys.executable, "-m", "venv", "--upgrade-deps", venv], timeout=300, env=_clean_env())
        times["create venv"] = time.monotonic() - start

        start = time.monotonic()
        _run([py, "-m", "pip", "install", "--quiet", f"{wheel}[{extra}]"], timeout=1800, env=_clean_env())
        _run([py, "-m", "pip", "check"], timeout=120, env=_clean_env())
        times[f"pip install wheel[{extra}]"] = time.monotonic() - start

        # What came in: this wheel, not the checkout; none of the book toolchain.
        start = time.monotonic()
        listing = _run([py, "-c", "import importlib.metadata as m, json; print(json.dumps("
                        "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"],
                       timeout=120, env=_clean_env(), cwd=tmp_path)
        dists = json.loads(listing.stdout)
        assert dists.get("medseg-tutorial") == __version__
        assert not {d for d in dists if d.startswith(BOOK_TOOLCHAIN) or d == "ipykernel"}, sorted(dists)
        assert "ipywidgets" in dists and "scikit-image" in dists
        times["list the distributions"] = time.monotonic() - start

        # Every chapter's imports resolve there (e.g. skimage for chapter 2), plus ipywidgets for tqdm.auto.
        start = time.monotonic()
        modules = sorted(_chapter_imports() | {"ipywidgets"})
        _run([py, "-c", f"import importlib; [importlib.import_module(m) for m in {modules!r}]\n"
              "import importlib.util as u; assert u.find_spec('jupyter_book') is None and u.find_spec('sphinx') is None"],
             timeout=300, env=_clean_env(MPLBACKEND="Agg"), cwd=tmp_path)
        times["import the chapters' modules"] = time.monotonic() - start

        # Chapter 1's setup and imports cells, as plain Python, outside the checkout, offline.
        script = tmp_path / "chapter1_first_cells.py"
        script.write_text("\n\n".join(_without_magics(c) for c in cells[:2])
                          + "\n\nprint('medseg_tutorial from', medseg_tutorial.__file__)\n")
        run_dir, cache = tmp_path / "run", tmp_path / "cache"
        run_dir.mkdir()
        start = time.monotonic()
        out = _run([py, script], timeout=600, cwd=run_dir, env=_clean_env(
            PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            MEDSEG_DATA_ROOT=str(shared_root), MEDSEG_CACHE_DIR=str(cache),
            MEDSEG_NO_DOWNLOAD="1",  # a missing dataset fails the setup cell instead of downloading
            HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1"))
        times["chapter 1, first two cells"] = time.monotonic() - start

        assert f"medseg-tutorial {__version__} (commit " in out.stdout
        found = out.stdout.split("datasets found under the data root ($MEDSEG_DATA_ROOT): ", 1)[1].splitlines()[0]
        assert "msd_hippocampus" in found.split(", ") and str(shared_root) not in found  # no build-machine paths
        assert "msd_hippocampus: ready (licence CC BY-SA 4.0" in out.stdout
        assert "Task04_Hippocampus.tar" not in out.stdout + out.stderr  # no download was started
        assert not list(cache.rglob("*.tar*")), "the setup cell downloaded an archive"
        where = Path(out.stdout.split("medseg_tutorial from", 1)[1].strip())
        assert where.is_relative_to(venv), f"imported {where}, not the fresh venv's copy"
    finally:
        start = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)  # several GB; pytest keeps recent tmp_paths
        times["remove the venv"] = time.monotonic() - start
        print("\n".join(f"{step}: {seconds:.0f} s" for step, seconds in times.items()))
