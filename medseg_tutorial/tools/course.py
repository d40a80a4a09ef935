"""Export the chapter notebooks for teaching: a student copy without solutions and a teacher copy.

The exercise convention (ARCHITECTURE.md, "Notebooks"): an exercise is a markdown cell with an
``{exercise}`` directive; its solution is a markdown cell that *starts* with a ``{solution}``
directive, optionally followed by code cells tagged ``solution``. ``medseg course export DIR``
writes ``DIR/student`` (solutions removed, an answer cell where solution code was) and
``DIR/teacher`` (everything), both with outputs cleared, a README and the files the notebooks use.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .._version import __version__
from ..paths import CACHE_DIR_ENV, DATA_ROOT_ENV, REPO

try:
    import nbformat
except ImportError as exc:  # nbformat comes with the book extra, not the core package
    raise ImportError("medseg course needs the book extra: pip install 'medseg-tutorial[book]'") from exc

SOLUTION_TAG = "solution"
STUDENT_TAG = "student"
PLACEHOLDER = "# Your solution here"
COPIES = ("student", "teacher")
# Copied whole into both copies: chapters plot the committed result tables kept here.
RESOURCE_DIRS = ("results",)
# Never copied as resources: notebooks are exported one by one and text pages may hold solutions.
_NOT_RESOURCES = {".ipynb", ".md"}

_FENCE = r"(?:`{3,}|:{3,})"
_SOLUTION_OPENS_CELL = re.compile(rf"{_FENCE}\{{solution\}}")
# Any solution-like directive on any line, including sphinx-exercise's gated {solution-start}.
_SOLUTION_ANYWHERE = re.compile(rf"^\s*{_FENCE}\{{solution", re.M)
_EXERCISE = re.compile(rf"^\s*{_FENCE}\{{exercise(?:-start)?\}}", re.M)
# Relative file names in cell sources, e.g. "_static/overlay.png" or "results/grid.csv".
_FILE_REF = re.compile(r"[\w.-][\w./-]*\.\w+")


@dataclass(frozen=True)
class NotebookExport:
    """What the export did to one chapter."""

    name: str
    exercises: int
    solution_cells_removed: int


@dataclass(frozen=True)
class ExecutionFailure:
    """A copied notebook that did not run to the end."""

    notebook: Path
    cell_index: int | None  # index in the copied notebook; None if no cell had started
    cell_source: str
    error: str

    def __str__(self) -> str:
        where = "before any cell" if self.cell_index is None else f"cell {self.cell_index}"
        first_line = self.cell_source.strip().splitlines()[0] if self.cell_source.strip() else ""
        return f"{self.notebook.parent.name}/{self.notebook.name}, {where} `{first_line}`: {self.error}"


@dataclass
class CourseExport:
    """Where the copies went, per-chapter counts and, after ``execute=True``, what failed."""

    dest: Path
    student_dir: Path
    teacher_dir: Path
    notebooks: list[NotebookExport]
    resources: dict[str, list[Path]]  # copy name -> files copied beside its notebooks
    executed: tuple[str, ...] = ()  # the copies that were run ("student", "teacher")
    failures: list[ExecutionFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"{'notebook':<40} exercises  solution cells removed"]
        lines += [f"{n.name:<40} {n.exercises:>9}  {n.solution_cells_removed:>22}" for n in self.notebooks]
        lines.append(f"student copy: {self.student_dir}\nteacher copy: {self.teacher_dir}")
        if self.executed:
            lines.append(f"executed {len(self.executed) * len(self.notebooks)} notebooks "
                         f"({' and '.join(self.executed)} copies), {len(self.failures)} failed")
            lines += [f"FAILED {f}" for f in self.failures]
        return "\n".join(lines)


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _is_solution(cell: nbformat.NotebookNode) -> bool:
    """A solution cell by the book's convention (a directive opening a markdown cell, or the tag)."""
    if SOLUTION_TAG in _tags(cell):
        return True
    return cell.cell_type == "markdown" and bool(_SOLUTION_OPENS_CELL.match(cell.source.lstrip()))


def _holds_solution(cell: nbformat.NotebookNode) -> bool:
    """Stricter than ``_is_solution``: also a solution directive anywhere in a markdown cell."""
    return _is_solution(cell) or (
        cell.cell_type == "markdown" and bool(_SOLUTION_ANYWHERE.search(cell.source))
    )


def find_solution_text(nb: nbformat.NotebookNode) -> list[str]:
    """Sources of every cell that holds solution text, however it is written."""
    return [cell.source for cell in nb.cells if _holds_solution(cell)]


def count_exercises(nb: nbformat.NotebookNode) -> int:
    """Number of ``{exercise}`` directives in the markdown cells."""
    return sum(len(_EXERCISE.findall(c.source)) for c in nb.cells if c.cell_type == "markdown")


def clear_outputs(nb: nbformat.NotebookNode) -> None:
    """Remove outputs, execution counts and run metadata in place (copies start clean)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.get("metadata", {}).pop("execution", None)
    nb.metadata.pop("widgets", None)


def _answer_cell(number: int, with_id: bool) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(PLACEHOLDER, metadata={"tags": [STUDENT_TAG]})
    if with_id:
        cell.id = f"student-answer-{number}"  # stable ids: re-exporting gives no diff
    else:
        del cell["id"]  # cell ids exist from nbformat 4.5 on; older notebooks must not have them
    return cell


def strip_solutions(nb: nbformat.NotebookNode, name: str = "notebook") -> tuple[nbformat.NotebookNode, int]:
    """Return the student version of ``nb`` and how many solution cells it lost.

    Each run of removed solution *code* cells becomes one ``# Your solution here`` cell tagged
    ``student``. Raises ValueError if solution text would survive, e.g. a ``{solution}`` directive
    that does not open its cell or a gated ``{solution-start}`` block: refusing beats leaking.
    """
    student = copy.deepcopy(nb)
    cells: list[nbformat.NotebookNode] = []
    removed = answers = 0
    pending_answer = False
    with_ids = nb.get("nbformat_minor", 5) >= 5
    for cell in student.cells:
        if _is_solution(cell):
            removed += 1
            pending_answer |= cell.cell_type == "code"
            continue
        if pending_answer:
            answers += 1
            cells.append(_answer_cell(answers, with_ids))
            pending_answer = False
        cells.append(cell)
    if pending_answer:
        cells.append(_answer_cell(answers + 1, with_ids))
    student.cells = cells

    leftover = [i for i, cell in enumerate(cells) if _holds_solution(cell)]
    if leftover:
        raise ValueError(
            f"{name}: cells {leftover} of the student copy still hold solution text. Put each solution in "
            "its own markdown cell that starts with the {solution} directive (gated {solution-start} "
            "blocks are not supported) and tag solution code cells 'solution'."
        )
    return student, removed


def _toc_entries(node: object) -> list[str]:
    """Every ``root:`` / ``file:`` of a _toc.yml, in reading order."""
    if isinstance(node, dict):
        own = [str(node[key]) for key in ("root", "file") if key in node]
        return own + [entry for value in node.values() for entry in _toc_entries(value)]
    if isinstance(node, list):
        return [entry for item in node for entry in _toc_entries(item)]
    return []


def _book_config(book_dir: Path, name: str) -> tuple[Path, dict] | None:
    """``name`` (_toc.yml or _config.yml) from the chapter folder or the book root above it."""
    for path in (book_dir / name, book_dir.parent / name):
        if path.is_file():
            return path, yaml.safe_load(path.read_text()) or {}
    return None


def chapter_notebooks(book_dir: Path) -> list[Path]:
    """The notebooks in ``book_dir``, in _toc.yml order; any not in the TOC follow by name."""
    order: dict[Path, int] = {}
    if found := _book_config(book_dir, "_toc.yml"):
        toc_path, toc = found
        entries = _toc_entries(toc)
        # TOC entries are relative to the TOC's folder and may omit the suffix.
        order = {(toc_path.parent / e).resolve().with_suffix(""): i for i, e in enumerate(entries)}
    notebooks = [p for p in book_dir.glob("*.ipynb") if p.is_file()]
    return sorted(notebooks, key=lambda p: (order.get(p.resolve().with_suffix(""), len(order)), p.name))


def _resources(book_dir: Path, notebooks: Iterable[nbformat.NotebookNode]) -> list[Path]:
    """Files under ``book_dir`` the notebooks use: RESOURCE_DIRS plus every existing file a cell names."""
    root = book_dir.resolve()
    found = {p.resolve() for d in RESOURCE_DIRS for p in (root / d).rglob("*") if p.is_file()}
    for nb in notebooks:
        for cell in nb.cells:
            for ref in _FILE_REF.findall(cell.source):
                path = (root / ref).resolve()
                if path.is_file() and path.is_relative_to(root):  # nothing from outside the book
                    found.add(path)
    return sorted(p.relative_to(root) for p in found if p.suffix not in _NOT_RESOURCES)


def _readme(kind: str, title: str, names: list[str]) -> str:
    chapters = "\n".join(f"- `{name}`" for name in names)
    if kind == "student":
        exercises = (
            f"Exercises are boxed in the text. Where an exercise asks for code, write it in the cell "
            f"that reads `{PLACEHOLDER}`, then run the checker cell below it."
        )
    else:
        exercises = (
            "This is the **teacher copy**: every solution is included (markdown cells opening with a "
            f"`{{solution}}` directive, code cells tagged `{SOLUTION_TAG}`). Give students the student "
            "copy instead."
        )
    return f"""# {title}: {kind} copy

Exported by `medseg course export` from medseg-tutorial {__version__}. The notebooks are stored
without outputs; run them top to bottom. Files they read (result tables, figures) sit beside them.

{chapters}

## Exercises

{exercises}

## Running in JupyterLab

```bash
python -m venv .venv && source .venv/bin/activate
pip install "medseg-tutorial[notebook] @ git+https://github.com/medseg-tutorial/medseg-tutorial" jupyterlab
jupyter lab
```

## Running in Google Colab

Upload this whole folder to Google Drive and open a notebook from it with Colab. Colab starts in
`/content`, so first mount Drive and move into the folder, or the files beside the notebooks are
not found:

```python
from google.colab import drive
drive.mount("/content/drive")
%cd /content/drive/MyDrive/<this folder>
```

The notebook's first code cell then installs `medseg-tutorial` if the runtime lacks it. Choose
*Runtime > Change runtime type > GPU* for the training chapters.

## Data

Raw datasets are read from the **data root**, set with the `{DATA_ROOT_ENV}` environment variable
(a folder holding e.g. `msd/Task04_Hippocampus/`); prepared slices, downloads and weights go to
`{CACHE_DIR_ENV}` (default: your OS cache folder). Without a data root, the datasets live in
`<cache>/datasets`; `medseg data fetch msd_hippocampus` downloads the one most chapters use and
`medseg data check PATH` checks a folder.

```bash
export {DATA_ROOT_ENV}=/path/to/datasets   # before starting JupyterLab
```

In Colab, set it in a cell before the first one: `import os; os.environ["{DATA_ROOT_ENV}"] = "/content/drive/MyDrive/datasets"`.
"""


def execute_notebook(path: Path, timeout: int = 600) -> ExecutionFailure | None:
    """Run ``path`` with nbclient in its own folder; None if it ran to the end. The file is not changed."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    started: list[int] = []
    client = NotebookClient(
        nb,
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},  # the kernel's cwd: relative paths resolve
        on_cell_execute=lambda cell, cell_index: started.append(cell_index),
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except (CellTimeoutError, DeadKernelError) as exc:
        error = str(exc).splitlines()[0]
    else:
        return None
    index = started[-1] if started else None
    source = nb.cells[index].source if index is not None else ""
    return ExecutionFailure(path, index, source, error)


def _empty_or_overwrite(folder: Path, overwrite: bool) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} is not empty; pass overwrite=True (--force) to replace it")
        shutil.rmtree(folder)


def export_course(
    dest: Path,
    book_dir: Path | None = None,
    *,
    execute: bool | str = False,
    timeout: int = 600,
    overwrite: bool = False,
) -> CourseExport:
    """Write ``dest/student`` and ``dest/teacher`` copies of every chapter notebook in ``book_dir``.

    ``execute=True`` (or ``"both"``) then runs each copied notebook (cwd = its folder) and records
    failures instead of raising, so one broken chapter does not hide the others; ``"student"`` or
    ``"teacher"`` runs that copy only (the teacher copy is the book itself, which its build runs).
    """
    kinds = COPIES if execute in (True, "both") else (execute,) if execute else ()
    if any(kind not in COPIES for kind in kinds):
        raise ValueError(f"execute={execute!r}: expected a bool, 'both', or one of {COPIES}")
    book_dir = Path(book_dir) if book_dir is not None else REPO / "book"
    paths = chapter_notebooks(book_dir)
    if not paths:
        raise FileNotFoundError(f"no chapter notebooks (*.ipynb) in {book_dir}")
    dest = Path(dest)

    # Build every copy in memory first so that a bad notebook leaves nothing half written.
    copies: dict[str, dict[str, nbformat.NotebookNode]] = {kind: {} for kind in COPIES}
    stats = []
    for path in paths:
        teacher = nbformat.read(path, as_version=4)
        clear_outputs(teacher)
        student, removed = strip_solutions(teacher, path.name)
        nbformat.validate(student)
        copies["teacher"][path.name] = teacher
        copies["student"][path.name] = student
        stats.append(NotebookExport(path.name, count_exercises(teacher), removed))

    for kind in COPIES:
        _empty_or_overwrite(dest / kind, overwrite)
    config = _book_config(book_dir, "_config.yml")
    title = (config[1].get("title") if config else None) or "Course notebooks"
    resources = {}
    for kind, notebooks in copies.items():
        folder = dest / kind
        folder.mkdir(parents=True, exist_ok=True)
        for name, nb in notebooks.items():
            nbformat.write(nb, folder / name)
        # Per copy, so a figure named only in a solution never reaches students.
        resources[kind] = _resources(book_dir, notebooks.values())
        for rel in resources[kind]:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(book_dir / rel, folder / rel)
        (folder / "README.md").write_text(_readme(kind, title, list(notebooks)))

    result = CourseExport(dest, dest / "student", dest / "teacher", stats, resources, executed=tuple(kinds))
    for kind in kinds:
        for name in copies[kind]:
            if failure := execute_notebook(dest / kind / name, timeout):
                result.failures.append(failure)
    return result
