"""A reader's first build, offline: the public dataset is downloaded when absent, used when present.

A loopback HTTP server (with range requests, like the real S3 mirror) serves a small MSD
Hippocampus archive made of real cases from the shared data; ``MEDSEG_DOWNLOAD_REGISTRY`` points
the download at it. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _loopback import send_with_range

from medseg_tutorial.data import DataError, iter_cases
from medseg_tutorial.data.msd import read_msd_task
from medseg_tutorial.data.registry import dataset_path
from medseg_tutorial.tools.catalog import ensure_dataset
from medseg_tutorial.tools.download import fetch_msd

BOOK = Path(__file__).resolve().parents[1] / "book"
TASK = "Task04_Hippocampus"
N_CASES = 10


class _Server:
    """Serves the files of a folder; honours ``Range: bytes=N-``; records (path, range) per request."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests = folder, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                path = server.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = send_with_range(self, data)
                if start is not None:
                    self.wfile.write(data[start:])

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def small_archive(shared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``Task04_Hippocampus.tar`` with the first real cases of the shared copy; returns (tar, md5)."""
    source = shared_root / "msd" / TASK
    build = tmp_path_factory.mktemp("archive") / TASK
    meta = json.loads((source / "dataset.json").read_text())
    meta["training"] = meta["training"][:N_CASES]
    meta["numTraining"] = N_CASES
    served = build.parent / "served"
    served.mkdir()
    tar_path = served / f"{TASK}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for entry in meta["training"]:
            for key in ("image", "label"):
                rel = entry[key].removeprefix("./")
                tar.add(source / rel, arcname=f"{TASK}/{rel}")
        (build / "dataset.json").parent.mkdir(parents=True)
        (build / "dataset.json").write_text(json.dumps(meta))
        tar.add(build / "dataset.json", arcname=f"{TASK}/dataset.json")
    return tar_path, hashlib.md5(tar_path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(small_archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback mirror of the small archive, registered for downloads; a fresh cache and data root."""
    tar_path, md5 = small_archive
    server = _Server(tar_path.parent)
    registry = tmp_path / "registry.txt"
    registry.write_text(f"# offline test mirror\n{TASK} {server.url}/{tar_path.name} md5:{md5}\n")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MEDSEG_DOWNLOAD_REGISTRY", str(registry))
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("MEDSEG_NO_DOWNLOAD", raising=False)
    yield server
    server.close()


# --- ensure_dataset: present, absent and downloadable, absent and not -----------------------------


def test_absent_public_dataset_is_downloaded_and_readable(mirror, tmp_path: Path) -> None:
    said: list[str] = []
    assert ensure_dataset("msd_hippocampus", progress=False, say=said.append)
    assert "downloading" in said[0] and "CC BY-SA 4.0" in said[0]
    cases = list(iter_cases("msd_hippocampus"))
    assert len(cases) == N_CASES and cases[0].mask.max() == 2
    assert dataset_path("msd_hippocampus") == tmp_path / "data" / "msd" / TASK
    # a second call finds the files and touches neither the network nor the archive
    assert ensure_dataset("msd_hippocampus", say=said.append) and len(mirror.requests) == 1


def test_present_dataset_is_used_as_is(mirror, shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(shared_root))
    said: list[str] = []
    assert ensure_dataset("msd_hippocampus", say=said.append)
    assert said == [] and mirror.requests == []


def test_download_failure_is_reported_not_raised(mirror, tmp_path: Path, monkeypatch) -> None:
    registry = tmp_path / "dead.txt"
    registry.write_text(f"{TASK} {mirror.url}/missing.tar md5:{'0' * 32}\n")
    monkeypatch.setenv("MEDSEG_DOWNLOAD_REGISTRY", str(registry))
    said: list[str] = []
    assert not ensure_dataset("msd_hippocampus", progress=False, say=said.append)
    assert "404" in said[-1] and "medseg data fetch msd_hippocampus" in said[-1]
    assert not dataset_path("msd_hippocampus").exists()


def test_downloads_can_be_switched_off(mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEG_NO_DOWNLOAD", "1")
    said: list[str] = []
    assert not ensure_dataset("msd_hippocampus", say=said.append)
    assert "MEDSEG_NO_DOWNLOAD=1" in said[0] and mirror.requests == []


def test_dataset_behind_an_account_is_never_downloaded(mirror) -> None:
    said: list[str] = []
    assert not ensure_dataset("lgg", say=said.append)
    assert "needs an account" in said[0] and mirror.requests == []
    assert ensure_dataset("phantom", say=said.append)  # generated: always available


def test_an_interrupted_download_resumes_with_a_range_request(mirror, small_archive, tmp_path: Path) -> None:
    tar_path, _ = small_archive
    data = tar_path.read_bytes()
    part = tmp_path / "cache" / "downloads" / f"{TASK}.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])  # what a killed download left behind
    folder = fetch_msd("hippocampus", dest=tmp_path / "msd", progress=False)
    assert mirror.requests == [(f"/{tar_path.name}", f"bytes={len(data) // 3}-")]
    assert (tmp_path / "cache" / "downloads" / f"{TASK}.tar").read_bytes() == data and not part.exists()
    assert len(list(read_msd_task(folder))) == N_CASES


def test_a_corrupt_partial_download_is_discarded(mirror, small_archive, tmp_path: Path) -> None:
    tar_path, _ = small_archive
    part = tmp_path / "cache" / "downloads" / f"{TASK}.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 100)  # not a prefix of the archive: the checksum must catch it
    with pytest.raises(DataError, match="failed verification") as err:
        fetch_msd("hippocampus", dest=tmp_path / "msd", progress=False)
    assert err.value.kind == "checksum" and not part.exists()
    folder = fetch_msd("hippocampus", dest=tmp_path / "msd", progress=False)  # the retry starts afresh
    assert mirror.requests[-1] == (f"/{tar_path.name}", None) and (folder / "dataset.json").is_file()


def test_registry_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "registry.txt"
    registry.write_text(f"{TASK} http://example.invalid/x.tar\n")
    monkeypatch.setenv("MEDSEG_DOWNLOAD_REGISTRY", str(registry))
    with pytest.raises(DataError, match=r"registry\.txt: line 1: expected 'TaskNN_Name URL HASH'"):
        fetch_msd("hippocampus", dest=tmp_path / "msd", progress=False)


# --- a whole chapter, as a reader's first build runs it -------------------------------------------


def _execute(name: str) -> str:
    """Execute a chapter in a fresh kernel (inheriting this process's environment); return its text output."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(BOOK / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}).execute()
    return "\n".join(
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )


@pytest.mark.slow
def test_chapter_1_on_a_fresh_machine_downloads_what_it_needs(mirror, tmp_path: Path) -> None:
    text = _execute("01_introduction.ipynb")
    assert "msd_hippocampus is not under" in text and "downloading" in text
    assert f"from {N_CASES} patients" in text  # the chapter read the downloaded copy
    assert "lgg: not found" in text and "acdc: not found" in text  # account-only data: skipped, said so
    assert (tmp_path / "data" / "msd" / TASK / "dataset.json").is_file()


@pytest.mark.slow
def test_chapter_1_with_the_data_present_downloads_nothing(mirror, shared_root: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(shared_root))
    text = _execute("01_introduction.ipynb")
    assert "downloading" not in text and "not found" not in text
    assert "from 260 patients" in text and mirror.requests == []
