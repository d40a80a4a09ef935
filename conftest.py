"""The chapters as tests: one test per notebook in book/, executed as the book build executes it.

Each notebook runs through :func:`medseg_tutorial.tools.notebooks.execute_cached`, which stores a
successful execution in ``_build/.jupyter_cache``; ``make book`` (``execute_notebooks: cache``)
renders those outputs instead of running the chapter again, so CI executes each chapter once.
A failing chapter fails its test with the failing cell's traceback. (With ``--nbval-lax`` on the
command line, nbval collects the notebooks cell by cell instead, and this hook stands aside.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent / "book"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and not _nbval(config):  # once, in the controller
        from medseg_tutorial.tools.notebooks import prepare

        prepare()


def _nbval(config: pytest.Config) -> bool:
    return bool(config.getoption("nbval_lax", False) or config.getoption("nbval", False))


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix == ".ipynb" and file_path.parent == BOOK and not _nbval(parent.config):
        return ChapterFile.from_parent(parent, path=file_path)
    return None


class ChapterFile(pytest.File):
    def collect(self):
        yield ChapterRun.from_parent(self, name="executes")


class ChapterRun(pytest.Item):
    def runtest(self) -> None:
        from medseg_tutorial.tools.notebooks import execute_cached

        result = execute_cached(self.path)
        how = "from the cache" if result.cached else "executed"
        self.user_properties.append(("notebook", f"{how}, {result.seconds or 0:.0f} s"))
        if not result.ok:
            raise ChapterError(result.error)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, ChapterError):
            return f"{self.path.name} failed:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: executes"


class ChapterError(Exception):
    """A chapter raised in one of its cells (the message is nbclient's, with the cell and traceback)."""
