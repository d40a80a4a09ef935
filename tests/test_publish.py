"""Publishing: the Pages workflow, scripts/publish.sh and CITATION.cff agree with the README and config."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from medseg_tutorial import __version__, cli

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "book.yml"
PUBLISH = REPO / "scripts" / "publish.sh"


def _readme_book_command() -> str:
    """First command of the first ```bash block under "## Quick start" in README.md."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", (REPO / "README.md").read_text(), re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "no ```bash block under '## Quick start'"
    lines = [ln.split("#")[0].strip() for ln in block.group(1).splitlines()]
    return next(ln for ln in lines if ln)


BOOK_CMD = _readme_book_command()


def _workflow() -> dict:
    wf = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def _step_using(job: dict, action: str) -> dict:
    found = [s for s in _steps(job) if s.get("uses", "").split("@")[0] == action]
    assert len(found) == 1, f"expected one step using {action}"
    return found[0]


def _run_lines(job: dict) -> list[str]:
    return [ln.strip() for s in _steps(job) for ln in s.get("run", "").splitlines() if ln.strip()]


def test_readme_book_command_is_a_make_target() -> None:
    assert BOOK_CMD == "make book"
    assert re.search(r"^book:", (REPO / "Makefile").read_text(), re.M)


def test_workflow_triggers_and_jobs() -> None:
    wf = _workflow()
    assert wf["on"]["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in wf["on"]
    assert wf["concurrency"]["group"]
    assert set(wf["jobs"]) == {"build", "deploy"}
    assert wf["jobs"]["build"]["runs-on"] == "ubuntu-latest"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    _step_using(deploy, "actions/deploy-pages")


def test_workflow_builds_with_the_readme_command_and_uploads_it() -> None:
    build = _workflow()["jobs"]["build"]
    lines = _run_lines(build)
    # Same install as the Makefile, the data live cells read, then the README's book command.
    order = ["make install", "medseg data fetch msd_hippocampus", BOOK_CMD]
    positions = [next(i for i, ln in enumerate(lines) if ln.endswith(cmd)) for cmd in order]
    assert positions == sorted(positions), lines
    assert BOOK_CMD in lines
    upload = _step_using(build, "actions/upload-pages-artifact")
    assert upload["with"]["path"] == "_build/html"
    assert _steps(build).index(upload) > max(positions)


def test_workflow_fetch_command_exists_in_the_cli() -> None:
    args = cli.build_parser().parse_args(["data", "fetch", "msd_hippocampus"])
    assert (args.command, args.data_cmd, args.name) == ("data", "fetch", "msd_hippocampus")


def test_workflow_caches_pip_and_prepared_data() -> None:
    build = _workflow()["jobs"]["build"]
    python = _step_using(build, "actions/setup-python")["with"]
    assert str(python["python-version"]) == "3.11"
    assert python["cache"] == "pip"
    assert python["cache-dependency-path"] == "pyproject.toml"
    cache = _step_using(build, "actions/cache")["with"]
    assert "hashFiles(" in cache["key"] and "book/" in cache["key"]
    # The cached folder is the one the package writes to.
    assert any(f"MEDSEG_CACHE_DIR=$HOME/{cache['path'].removeprefix('~/')}" in ln for ln in _run_lines(build))


def test_publish_script_shape() -> None:
    assert os.access(PUBLISH, os.X_OK), "scripts/publish.sh must be executable"
    lines = [ln.strip() for ln in PUBLISH.read_text().splitlines()]
    assert "set -euo pipefail" in lines
    assert BOOK_CMD in lines
    assert any(re.search(r"ghp-import\"? -n -p -f _build/html$", ln) for ln in lines)


def _run_publish(tmp_path: Path, *args: str, make_status: int = 0) -> tuple[int, list[str]]:
    """Run publish.sh with stub `make` and `ghp-import` that only log their arguments."""
    log = tmp_path / "calls.log"
    stubs = tmp_path / "stubs"
    (stubs / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    for path, name, status in (
        (stubs / "make", "make", make_status),
        (stubs / "venv/bin/ghp-import", "ghp-import", 0),
    ):
        path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\nexit {status}\n')
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "VENV": str(stubs / "venv")}
    proc = subprocess.run([str(PUBLISH), *args], env=env, capture_output=True, text=True, timeout=30)
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(
    ("args", "make_status", "rc", "calls"),
    [
        (["--dry-run"], 0, 0, [BOOK_CMD]),
        ([], 0, 0, [BOOK_CMD, "ghp-import -n -p -f _build/html"]),
        ([], 2, 2, [BOOK_CMD]),  # a failed build never reaches the push
        (["--bogus"], 0, 2, []),
    ],
)
def test_publish_script_behaviour(
    tmp_path: Path, args: list[str], make_status: int, rc: int, calls: list[str]
) -> None:
    assert _run_publish(tmp_path, *args, make_status=make_status) == (rc, calls)


def test_citation_cff() -> None:
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == config["title"]
    assert cff["authors"] == [{"name": "The medseg-tutorial authors"}]
    assert cff["license"] == "MIT"
    assert cff["repository-code"] == config["repository"]["url"]
    assert cff["version"] == __version__
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(cff["date-released"]))
    cited = cff["preferred-citation"]
    assert cited["type"] in {"book", "software"}
    assert cited["title"] == config["title"] and cited["authors"] == cff["authors"]
