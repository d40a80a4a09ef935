"""Static checks on the chapter notebooks: stored without outputs, no implementation inside them.

The notebooks themselves are executed elsewhere. `make test` collects every `book/*.ipynb` as one
test (the repository's conftest.py), which runs the chapter with
`medseg_tutorial.tools.notebooks.execute_cached` and stores a successful execution in
`_build/.jupyter_cache`; `make book` (`execute_notebooks: cache`) renders those outputs and executes
only the chapters that miss the cache. `pytest --nbval-lax book/` runs them cell by cell with nbval
instead (the conftest hook then stands aside).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(p for p in BOOK.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
MAX_CODE_LINES = 25  # a teaching snippet; longer cells belong in the package
MAX_DEFINED_FUNCTION_LINES = 12  # exercises may define a short student function


def _code_cells(nb: Path) -> list[dict]:
    return [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_chapters() -> None:
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(nb: Path) -> None:
    for i, cell in enumerate(_code_cells(nb)):
        assert not cell.get("outputs"), f"{nb.name}: code cell {i} has stored outputs; clear them"
        assert cell.get("execution_count") is None, f"{nb.name}: code cell {i} has an execution count"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_implementation_in_notebooks(nb: Path) -> None:
    for i, cell in enumerate(_code_cells(nb)):
        source = "".join(cell["source"])
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert len(lines) <= MAX_CODE_LINES, f"{nb.name}: code cell {i} has {len(lines)} lines of code"
        code = "\n".join(ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_DEFINED_FUNCTION_LINES, (
                    f"{nb.name}: cell {i} defines {node.name} ({length} lines); move it into medseg_tutorial"
                )


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_check_cells_do_not_depend_on_solutions(nb: Path) -> None:
    """Hidden check cells (tag remove-cell) also run in the student copy, where solutions are gone."""
    cells = json.loads(nb.read_text())["cells"]
    for i, cell in enumerate(cells):
        if "remove-cell" in cell.get("metadata", {}).get("tags", []):
            previous = cells[i - 1].get("metadata", {}).get("tags", [])
            assert "solution" not in previous, f"{nb.name}: check cell {i} follows a solution cell"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_a_unique_id(nb: Path) -> None:
    """nbformat 4.5 cell ids: a cell without one makes nbformat warn, and a future nbformat refuses it."""
    data = json.loads(nb.read_text())
    if (data["nbformat"], data["nbformat_minor"]) < (4, 5):
        pytest.skip("nbformat before 4.5 has no cell ids")
    ids = [cell.get("id") for cell in data["cells"]]
    missing = [i for i, cell_id in enumerate(ids) if not cell_id]
    assert not missing, f"{nb.name}: cells {missing} have no id (nbformat.validator.normalize adds them)"
    assert len(set(ids)) == len(ids), f"{nb.name}: repeated cell ids"
