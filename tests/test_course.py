"""`medseg course export`: student copies hold no solution, teacher copies hold all, both run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from medseg_tutorial.tools.course import (
    PLACEHOLDER,
    STUDENT_TAG,
    CourseExport,
    chapter_notebooks,
    export_course,
    find_solution_text,
)

REPO = Path(__file__).resolve().parents[1]
# Distinctive strings that appear only inside solutions.
SECRETS = ("SECRET-MD-7f3a", "SECRET-CODE-91bc", "SECRET-PRINT-4d2e", "SECRET-MD-c0de")
SOLUTION_TAGS = {"tags": ["solution", "hide-input"]}


def _intro() -> nbformat.NotebookNode:
    stale = new_code_cell("print('hello')", execution_count=3, outputs=[new_output("stream", text="stale")])
    return new_notebook(
        cells=[
            new_markdown_cell("# Intro\n\n![a figure](_static/figure.png)"),
            stale,
            # Needs results/ copied whole (no cell names the path) and the kernel started beside it.
            new_code_cell(
                "from pathlib import Path\nassert Path('results', 'scores.csv').read_text().startswith('model')"
            ),
            new_markdown_cell("```{exercise}\n:label: ex-01-1\nCompute six times seven.\n```"),
            new_markdown_cell(
                "```{solution} ex-01-1\n:class: dropdown\nMultiply: SECRET-MD-7f3a\n\n"
                "![worked answer](_static/solution_plot.png)\n```"
            ),
            new_code_cell("answer = 6 * 7  # SECRET-CODE-91bc", metadata=SOLUTION_TAGS),
            new_code_cell("print(answer, 'SECRET-PRINT-4d2e')", metadata=SOLUTION_TAGS),
            new_code_cell("print('after the exercise')"),
        ]
    )


def _more() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(":::{exercise}\n:label: ex-02-1\nName a segmentation loss.\n:::"),
            new_markdown_cell(":::{solution} ex-02-1\n:class: dropdown\nDice loss. SECRET-MD-c0de\n:::"),
            new_code_cell("x = 1"),
        ]
    )


def _make_book(root: Path, notebooks: dict[str, nbformat.NotebookNode]) -> Path:
    """A Jupyter Book in ``root`` with its chapters in ``root/book``."""
    book = root / "book"
    (book / "_static").mkdir(parents=True)
    (book / "results").mkdir()
    for name in ("figure.png", "unused.png", "solution_plot.png"):
        (book / "_static" / name).write_bytes(b"\x89PNG fake")
    (book / "results" / "scores.csv").write_text("model,dice\nunet,0.9\n")
    (root / "_config.yml").write_text('title: "Fake Book"\n')
    chapters = "".join(f"      - file: book/{Path(n).stem}\n" for n in notebooks)
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: book/intro\nparts:\n  - chapters:\n{chapters}")
    for name, nb in notebooks.items():
        nbformat.write(nb, book / name)
    return book


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The TOC lists 02 before 01: the export must follow the TOC, not file names.
    return _make_book(tmp_path_factory.mktemp("fake"), {"02_more.ipynb": _more(), "01_intro.ipynb": _intro()})


@pytest.fixture(scope="module")
def exported(book: Path, tmp_path_factory: pytest.TempPathFactory) -> CourseExport:
    return export_course(tmp_path_factory.mktemp("course") / "out", book, execute=True, timeout=60)


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _tree_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_student_copy_holds_no_solution_anywhere(exported: CourseExport) -> None:
    text = _tree_text(exported.student_dir)
    for secret in SECRETS:
        assert secret not in text
    for path in exported.student_dir.glob("*.ipynb"):
        assert find_solution_text(_read(path)) == []
    assert not (exported.student_dir / "_static" / "solution_plot.png").exists()


def test_teacher_copy_keeps_every_solution(exported: CourseExport) -> None:
    text = _tree_text(exported.teacher_dir)
    for secret in SECRETS:
        assert secret in text
    assert len(find_solution_text(_read(exported.teacher_dir / "01_intro.ipynb"))) == 3
    assert (exported.teacher_dir / "_static" / "solution_plot.png").is_file()


def test_answer_cell_replaces_solution_code(exported: CourseExport) -> None:
    cells = _read(exported.student_dir / "01_intro.ipynb").cells
    answers = [i for i, c in enumerate(cells) if c.source == PLACEHOLDER]
    assert len(answers) == 1  # one answer cell for the two consecutive solution code cells
    (i,) = answers
    assert cells[i].cell_type == "code" and cells[i].metadata["tags"] == [STUDENT_TAG]
    assert cells[i - 1].source.startswith("```{exercise}")
    assert cells[i + 1].source == "print('after the exercise')"
    # A solution in words only gets no answer cell.
    assert PLACEHOLDER not in _tree_text(exported.student_dir / "02_more.ipynb")


def test_counts_follow_toc_order(exported: CourseExport) -> None:
    got = [(n.name, n.exercises, n.solution_cells_removed) for n in exported.notebooks]
    assert got == [("02_more.ipynb", 1, 1), ("01_intro.ipynb", 1, 3)]


def test_copies_are_clean_valid_and_self_contained(exported: CourseExport) -> None:
    for folder in (exported.student_dir, exported.teacher_dir):
        assert sorted(p.name for p in folder.glob("*.ipynb")) == ["01_intro.ipynb", "02_more.ipynb"]
        for path in folder.glob("*.ipynb"):
            nb = _read(path)
            nbformat.validate(nb)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    assert cell.outputs == [] and cell.execution_count is None, path.name
        assert (folder / "results" / "scores.csv").is_file()
        assert (folder / "_static" / "figure.png").is_file()
        assert not (folder / "_static" / "unused.png").exists()  # only what the notebooks name
        readme = (folder / "README.md").read_text()
        for needed in ("Fake Book", "JupyterLab", "Colab", "MEDSEG_DATA_ROOT", "01_intro.ipynb"):
            assert needed in readme


def test_both_copies_execute(exported: CourseExport) -> None:
    assert exported.executed == ("student", "teacher")
    assert exported.failures == [], exported.summary()
    assert exported.ok


def test_failing_notebook_is_reported_with_its_name_and_cell(tmp_path: Path) -> None:
    broken = new_notebook(
        cells=[
            new_markdown_cell("# Broken"),
            new_code_cell("x = 1"),
            new_code_cell("raise RuntimeError('boom')"),
            new_code_cell("y = 2"),
        ]
    )
    book = _make_book(tmp_path / "src", {"03_broken.ipynb": broken})
    result = export_course(tmp_path / "out", book, execute=True, timeout=60)
    assert not result.ok
    assert [(f.notebook.parent.name, f.notebook.name, f.cell_index) for f in result.failures] == [
        ("student", "03_broken.ipynb", 2),
        ("teacher", "03_broken.ipynb", 2),
    ]
    message = str(result.failures[0])
    assert "student/03_broken.ipynb" in message and "cell 2" in message and "RuntimeError: boom" in message
    assert "FAILED" in result.summary()
    only = export_course(tmp_path / "only", book, execute="student", timeout=60)
    assert only.executed == ("student",) and [f.notebook.parent.name for f in only.failures] == ["student"]
    with pytest.raises(ValueError, match="execute='students'"):
        export_course(tmp_path / "bad", book, execute="students")


@pytest.mark.parametrize(
    "source",
    [
        "Some words first.\n\n```{solution} ex-01-1\nSECRET-MD-7f3a\n```",  # directive not opening the cell
        "```{solution-start} ex-01-1\n```",  # sphinx-exercise's gated form
    ],
)
def test_refuses_to_export_solutions_it_cannot_remove(tmp_path: Path, source: str) -> None:
    book = _make_book(tmp_path / "src", {"01_bad.ipynb": new_notebook(cells=[new_markdown_cell(source)])})
    with pytest.raises(ValueError, match=r"01_bad\.ipynb"):
        export_course(tmp_path / "out", book)
    assert not (tmp_path / "out").exists()  # nothing half written


def test_old_format_notebooks_stay_valid(tmp_path: Path) -> None:
    nb = _intro()
    nb.nbformat_minor = 4  # before cell ids: the inserted answer cell must not carry one
    for cell in nb.cells:
        del cell["id"]
    book = _make_book(tmp_path / "src", {"01_intro.ipynb": nb})
    result = export_course(tmp_path / "out", book)
    student = _read(result.student_dir / "01_intro.ipynb")
    nbformat.validate(student)
    assert PLACEHOLDER in [c.source for c in student.cells]


def test_existing_copies_are_replaced_only_when_asked(book: Path, tmp_path: Path) -> None:
    export_course(tmp_path, book)
    stale = tmp_path / "student" / "old_chapter.ipynb"
    stale.write_text("{}")
    with pytest.raises(FileExistsError):
        export_course(tmp_path, book)
    export_course(tmp_path, book, overwrite=True)
    assert not stale.exists()


def test_chapters_not_in_toc_come_last(book: Path, tmp_path: Path) -> None:
    extra = tmp_path / "book"
    extra.mkdir()
    for path in book.glob("*.ipynb"):
        (extra / path.name).write_bytes(path.read_bytes())
    nbformat.write(new_notebook(), extra / "00_appendix.ipynb")
    (tmp_path / "_toc.yml").write_text((book.parent / "_toc.yml").read_text())
    assert [p.name for p in chapter_notebooks(extra)] == [
        "02_more.ipynb",
        "01_intro.ipynb",
        "00_appendix.ipynb",
    ]


def test_real_book_student_copies_have_no_solution_cells(tmp_path: Path) -> None:
    if not chapter_notebooks(REPO / "book"):
        pytest.skip("the book has no chapter notebooks yet")
    result = export_course(tmp_path, REPO / "book")
    for chapter in result.notebooks:
        student = _read(result.student_dir / chapter.name)
        assert find_solution_text(student) == [], chapter.name
        teacher = _read(result.teacher_dir / chapter.name)
        assert len(find_solution_text(teacher)) == chapter.solution_cells_removed, chapter.name
        assert len(teacher.cells) - len(student.cells) <= chapter.solution_cells_removed


def test_cli_course_export(book: Path, tmp_path: Path) -> None:
    from medseg_tutorial import cli

    if "course" not in cli.COMMANDS:
        pytest.skip("`medseg course` is not registered in cli.py yet")
    assert cli.main(["course", "export", str(tmp_path), "--book", str(book)]) == 0
    assert find_solution_text(_read(tmp_path / "student" / "01_intro.ipynb")) == []
    assert cli.main(["course", "export", str(tmp_path), "--book", str(book)]) == 2  # refuses to overwrite
