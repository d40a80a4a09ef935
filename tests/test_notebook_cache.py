"""The shared execution of the chapters: tests and book build run each chapter once per change."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from medseg_tutorial.tools import notebooks


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_prepare_empties_the_cache_only_when_an_input_changes(tmp_path):
    repo = tmp_path / "repo"
    (repo / "medseg_tutorial").mkdir(parents=True)
    (repo / "medseg_tutorial" / "a.py").write_text("x = 1\n")
    cache = tmp_path / "cache"
    assert notebooks.prepare(cache, repo)  # new
    (cache / "executed").mkdir()
    assert not notebooks.prepare(cache, repo) and (cache / "executed").is_dir()  # same inputs: kept
    (repo / "medseg_tutorial" / "a.py").write_text("x = 2\n")
    assert notebooks.prepare(cache, repo) and not (cache / "executed").exists()  # package changed
    (repo / "book" / "results").mkdir(parents=True)
    (repo / "book" / "results" / "t.csv").write_text("a\n1\n")
    assert notebooks.prepare(cache, repo)  # a results table appeared


@pytest.mark.slow
def test_execute_cached_runs_once_and_never_caches_a_failure(tmp_path):
    cache = tmp_path / "cache"
    good = _notebook(tmp_path / "good.ipynb", "from pathlib import Path", "Path('ran.txt').write_text('x')")
    first = notebooks.execute_cached(good, cache)
    assert first.ok and not first.cached and (tmp_path / "ran.txt").is_file()  # ran in its own folder
    (tmp_path / "ran.txt").unlink()
    second = notebooks.execute_cached(good, cache)
    assert second.ok and second.cached and not (tmp_path / "ran.txt").exists()  # not executed again
    bad = _notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('chapter 3 broke')")
    for _ in range(2):  # a failure is not cached: it runs (and fails) again
        result = notebooks.execute_cached(bad, cache)
        assert not result.ok and not result.cached and "chapter 3 broke" in result.error
    # the teacher's guide's run times: the successful execution's seconds, by notebook, and no failure's
    times = notebooks.cached_times(cache)
    assert list(times) == ["good.ipynb"] and times["good.ipynb"] == pytest.approx(first.seconds)
    assert notebooks.cached_times(tmp_path / "no_cache") == {}
