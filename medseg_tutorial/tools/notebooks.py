"""Execute each chapter once for both the tests and the book build: a shared jupyter-cache.

``make test`` executes every chapter (one test per notebook, see the repository's ``conftest.py``)
with the same machinery the book build uses in ``execute_notebooks: cache`` mode (jupyter-cache's
``single_nb_execution``, in the notebook's folder, the same timeout) and stores each successful
execution in ``_build/.jupyter_cache``; ``make book`` then renders those outputs instead of running
the chapter a second time. A notebook whose code cells changed misses the cache (jupyter-cache
hashes the code cells), and so does every notebook once anything else a chapter reads changes:
the cache is emptied when the fingerprint of the package, the configs and the results tables
differs from the one it was filled with.

    python -m medseg_tutorial.tools.notebooks --prepare   # empty a stale cache (make book runs this)
    python -m medseg_tutorial.tools.notebooks --times     # each cached chapter's execution time (teacher's guide)
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from ..files import exclusive_lock
from ..paths import REPO

__all__ = ["execute_cached"]

CACHE = REPO / "_build" / ".jupyter_cache"
# Two test workers finishing chapters at once made the cache's SQLite database raise OperationalError
# (jupyter-cache opens it with SQLite's 5-second busy wait and creates its tables without a guard):
# every access holds this lock, with wait=True (the other worker's writes take moments).
LOCK = ".lock"
# what the chapters' outputs depend on besides their own code cells
INPUTS = ("medseg_tutorial/**/*.py", "configs/**/*.yaml", "book/results/**/*.csv", "pyproject.toml")
_STAMP = "inputs.sha256"


def fingerprint(repo: Path = REPO) -> str:
    """SHA-256 over the paths and contents of every file in :data:`INPUTS`."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in INPUTS for p in repo.glob(pattern) if p.is_file()}):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def prepare(cache: Path = CACHE, repo: Path = REPO) -> bool:
    """Empty ``cache`` if it was filled from other inputs; True if it was emptied (or did not exist)."""
    stamp, now = cache / _STAMP, fingerprint(repo)
    if stamp.is_file() and stamp.read_text().strip() == now:
        return False
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    stamp.write_text(now + "\n")
    return True


def _timeout(repo: Path = REPO) -> int:
    """The book's per-cell timeout (``execute.timeout`` in ``_config.yml``), so tests and build agree."""
    config = yaml.safe_load((repo / "_config.yml").read_text()) or {}
    return int(config.get("execute", {}).get("timeout", 600))


@dataclass(frozen=True)
class Execution:
    """How one notebook fared: ``cached`` (ran earlier with the same inputs) or ran now in ``seconds``."""

    path: Path
    cached: bool
    seconds: float | None
    error: str | None = None  # the failing cell's traceback, None when every cell ran

    @property
    def ok(self) -> bool:
        return self.error is None


def execute_cached(path: str | Path, cache: Path = CACHE) -> Execution:
    """Outputs of ``path`` from ``cache``, or execute it as the book build would and cache the result.

    Only successful executions are cached (as in the build), so a failing chapter runs again next time.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from jupyter_cache.executors.utils import single_nb_execution

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    with exclusive_lock(cache / LOCK, f"notebook cache {cache}", wait=True):
        store = get_cache(str(cache))
        try:
            record = store.match_cache_notebook(nb)
            return Execution(path, True, record.data.get("execution_seconds"))
        except KeyError:
            store.add_nb_to_project(str(path))
    result = single_nb_execution(nb, cwd=str(path.parent), timeout=_timeout(), allow_errors=False,
                                 meta_override=True)
    if result.err is not None:
        return Execution(path, False, result.time, result.exc_string or repr(result.err))
    with exclusive_lock(cache / LOCK, f"notebook cache {cache}", wait=True):
        store.cache_notebook_bundle(CacheBundleIn(nb, str(path), data={"execution_seconds": result.time}),
                                    check_validity=False, overwrite=True)
    return Execution(path, False, result.time)


def cached_times(cache: Path = CACHE) -> dict[str, float]:
    """Seconds each cached notebook took to execute, by file name (the run times of the teacher's guide)."""
    from jupyter_cache import get_cache

    if not cache.is_dir():
        return {}
    store = get_cache(str(cache))
    times = {}
    for record in store.list_project_records():
        try:
            cached = store.get_cached_project_nb(record.pk)
        except KeyError:
            continue
        if cached is not None and cached.data.get("execution_seconds") is not None:
            times[Path(record.uri).name] = float(cached.data["execution_seconds"])
    return dict(sorted(times.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medseg_tutorial.tools.notebooks", description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", action="store_true", help="empty the cache if its inputs changed")
    parser.add_argument("--times", action="store_true", help="print each cached chapter's execution time")
    args = parser.parse_args(argv)
    if args.times:
        for name, seconds in cached_times().items():
            print(f"{name:32s} {seconds:7.1f} s")
    if args.prepare:
        emptied = prepare()
        print(f"notebook cache {CACHE}: {'emptied (inputs changed)' if emptied else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
