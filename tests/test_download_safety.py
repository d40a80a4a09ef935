"""A hostile or broken mirror cannot write outside the data folder, and a trickling one cannot hang a fetch.

Every archive here is crafted in ``tmp_path``; the end-to-end cases download it from a loopback HTTP
server (127.0.0.1 only, like tests/test_fresh_machine.py) through ``MEDSEG_DOWNLOAD_REGISTRY``, the
others call :func:`extract_archive` directly. Nothing touches the network or files outside tmp_path.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import stat
import tarfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _loopback import send_with_range

from medseg_tutorial.data.errors import DataError
from medseg_tutorial.tools.download import ResumableDownloader, extract_archive, fetch_msd

TASK = "Task04_Hippocampus"
DATASET_JSON = json.dumps({"name": "Hippocampus", "labels": {"0": "background"}, "training": []}).encode()


# --- crafting archives ----------------------------------------------------------------------------


def _member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, mode: int | None = None,
            linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    """A tar member as given, whatever tarfile.add would have made of it."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, linkname, 1_700_000_000
    info.mode = mode if mode is not None else 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    with tarfile.open(path) as tar:  # tarfile writes names as given: make sure the crafted one survived
        assert [m.name for m in tar.getmembers()] == [info.name for info, _ in members]
    return path


def _valid_start() -> list[tuple[tarfile.TarInfo, bytes]]:
    """What precedes the bad member: were members written as they are checked, these would appear."""
    return [_member(TASK, kind=tarfile.DIRTYPE), _member(f"{TASK}/dataset.json", DATASET_JSON)]


# Each bad case: (id, builder(tmp_path) -> the bad members, name of the offending member, problem words).
BadCase = tuple[str, Callable[[Path], list[tuple[tarfile.TarInfo, bytes]]], Callable[[Path], str], str]
BAD_CASES: list[BadCase] = [
    ("dotdot", lambda t: [_member("../evil", b"x")], lambda t: "../evil", "leads outside"),
    ("dotdot-onto-sentinel", lambda t: [_member(f"{TASK}/../../../../outside/sentinel.txt", b"overwritten")],
     lambda t: f"{TASK}/../../../../outside/sentinel.txt", "leads outside"),
    ("absolute", lambda t: [_member(str(t / "outside" / "absolute_evil"), b"x")],
     lambda t: str(t / "outside" / "absolute_evil"), "absolute"),
    ("symlink", lambda t: [_member(f"{TASK}/link", kind=tarfile.SYMTYPE, linkname=str(t / "outside")),
                           _member(f"{TASK}/link/through_link", b"x")],
     lambda t: f"{TASK}/link", "symbolic link"),
    ("hardlink", lambda t: [_member(f"{TASK}/hard", kind=tarfile.LNKTYPE,
                                    linkname=str(t / "outside" / "sentinel.txt")),
                            _member(f"{TASK}/hard", b"overwritten")],
     lambda t: f"{TASK}/hard", "hard link"),
    ("device", lambda t: [_member(f"{TASK}/null", kind=tarfile.CHRTYPE)], lambda t: f"{TASK}/null",
     "device file"),
    ("fifo", lambda t: [_member(f"{TASK}/pipe", kind=tarfile.FIFOTYPE)], lambda t: f"{TASK}/pipe", "FIFO"),
]


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every path under root (but ``skip``) with its type, mode, size and (files) mtime: any change shows.

    A folder's mtime is left out: the staging folder, made and removed in ``data/msd``, changes it.
    """
    entries = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        st = path.lstat()
        mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
        entries[str(path.relative_to(root))] = (st.st_mode, st.st_size, mtime)
    return entries


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """``outside/sentinel.txt`` (what an attack would touch) and the empty ``data/msd`` target."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "sentinel.txt").write_text("original")
    (tmp_path / "data" / "msd").mkdir(parents=True)
    return tmp_path


# --- a loopback mirror ----------------------------------------------------------------------------


class _Server:
    """Serves ``files`` (path -> bytes) with ``Range: bytes=N-``; records (path, range) per request.

    With ``trickle_after`` set, the next full request gets that many bytes at once and then one byte a
    second, like a mirror that has all but stalled; later requests are served normally.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.trickle_after: int | None = None
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = send_with_range(self, data)
                if start is None:
                    return
                trickle, server.trickle_after = server.trickle_after, None
                try:
                    if trickle is None:
                        self.wfile.write(data[start:])
                        return
                    self.wfile.write(data[start:start + trickle])
                    for i in range(start + trickle, len(data)):
                        if server.closing.wait(1.0):
                            return
                        self.wfile.write(data[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, tar_path: Path, registry: Path) -> str:
        """Serve ``tar_path`` as the task's archive and register it (URL and MD5); return its URL path."""
        data = tar_path.read_bytes()
        self.files[f"/{TASK}.tar"] = data
        registry.write_text(f"{TASK} {self.url}/{TASK}.tar md5:{hashlib.md5(data).hexdigest()}\n")
        return f"/{TASK}.tar"

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(layout: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback mirror registered for downloads; cache and data root in tmp_path; rate env unset."""
    server = _Server()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
                "MEDSEG_MSD_MIRROR", "MEDSEG_NO_DOWNLOAD", "MEDSEG_DOWNLOAD_MIN_RATE",
                "MEDSEG_DOWNLOAD_STALL_SECONDS", "MEDSEG_DOWNLOAD_DEADLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MEDSEG_DOWNLOAD_REGISTRY", str(layout / "registry.txt"))
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(layout / "cache"))
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(layout / "data"))
    yield server
    server.close()


# --- archives that must be refused ----------------------------------------------------------------


@pytest.mark.parametrize("via", ["extract_archive", "fetch_msd"])
@pytest.mark.parametrize("case", BAD_CASES, ids=[case[0] for case in BAD_CASES])
def test_a_hostile_archive_is_refused_before_anything_is_written(case: BadCase, via: str, layout: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    _, bad_members, offender, problem = case
    dest = layout / "data" / "msd"
    archive = _write_tar(layout / "served" / f"{TASK}.tar", _valid_start() + bad_members(layout))
    if via == "fetch_msd":
        server = request.getfixturevalue("mirror")
        server.publish(archive, layout / "registry.txt")
    before = _snapshot(layout, skip=layout / "cache")

    with pytest.raises(DataError) as err:
        if via == "fetch_msd":
            fetch_msd("hippocampus", progress=False)
        else:
            extract_archive(archive, dest, TASK)

    assert err.value.kind == "invalid" and f"member {offender(layout)!r}" in err.value.message
    assert problem in err.value.message and "\n" not in str(err.value)
    assert err.value.path.endswith(f"{TASK}.tar")
    assert _snapshot(layout, skip=layout / "cache") == before  # sentinel untouched, nothing new anywhere
    assert (layout / "outside" / "sentinel.txt").read_text() == "original"
    assert list(dest.iterdir()) == []  # neither a task folder nor a leftover staging folder


# --- archives that are fine -----------------------------------------------------------------------


def _good_archive(path: Path) -> Path:
    """An MSD-like task with a macOS AppleDouble file inside and one beside it, as some MSD tars have."""
    return _write_tar(path, [
        _member(f"._{TASK}", b"\x00\x05\x16\x07 apple double"),
        *_valid_start(),
        _member(f"{TASK}/._dataset.json", b"\x00\x05\x16\x07 apple double"),
        _member(f"{TASK}/imagesTr", kind=tarfile.DIRTYPE),
        _member(f"{TASK}/imagesTr/hippocampus_001.nii.gz", b"not really a nifti" * 100),
    ])


def test_a_normal_archive_extracts_into_place(layout: Path) -> None:
    dest = layout / "data" / "msd"
    task_dir = extract_archive(_good_archive(layout / "served" / f"{TASK}.tar"), dest, TASK)
    assert task_dir == dest / TASK
    assert (task_dir / "dataset.json").read_bytes() == DATASET_JSON
    assert (task_dir / "imagesTr" / "hippocampus_001.nii.gz").read_bytes() == b"not really a nifti" * 100
    assert (task_dir / "._dataset.json").is_file()  # an ordinary file: kept
    assert [p.name for p in dest.iterdir()] == [TASK]  # no staging folder left, the top-level ._ file dropped


def test_a_normal_archive_is_downloaded_and_extracted_by_fetch_msd(mirror: _Server, layout: Path) -> None:
    url_path = mirror.publish(_good_archive(layout / "served" / f"{TASK}.tar"), layout / "registry.txt")
    folder = fetch_msd("hippocampus", progress=False)
    assert folder == layout / "data" / "msd" / TASK and (folder / "dataset.json").read_bytes() == DATASET_JSON
    assert mirror.requests == [(url_path, None)]
    assert [p.name for p in (layout / "outside").iterdir()] == ["sentinel.txt"]


@pytest.mark.parametrize("data_filter", [True, False], ids=["data-filter", "fallback-without-filter"])
def test_setuid_setgid_sticky_and_group_write_bits_are_cleared(data_filter: bool, layout: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not data_filter:  # what a Python older than 3.10.12 / 3.11.4 goes through
        monkeypatch.delattr(tarfile, "data_filter")
    archive = _write_tar(layout / "served" / f"{TASK}.tar", [
        *_valid_start(),
        _member(f"{TASK}/tool", b"#!/bin/sh\n", mode=0o4755),  # setuid
        _member(f"{TASK}/shared.txt", b"notes", mode=0o2666),  # setgid, group and other writable
        _member(f"{TASK}/scratch", kind=tarfile.DIRTYPE, mode=0o1777),  # sticky, world writable
    ])
    task_dir = extract_archive(archive, layout / "data" / "msd", TASK)
    assert stat.S_IMODE((task_dir / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((task_dir / "shared.txt").stat().st_mode) == 0o644
    assert (task_dir / "tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((task_dir / "scratch").stat().st_mode) & (stat.S_ISVTX | stat.S_IWOTH) == 0


def test_an_interrupted_extraction_leaves_no_task_folder(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = layout / "data" / "msd"
    archive = _good_archive(layout / "served" / f"{TASK}.tar")
    written: list[str] = []
    makefile = tarfile.TarFile.makefile

    def disk_fills_up(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(targetpath)
        makefile(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", disk_fills_up)
    with pytest.raises(DataError, match="No space left on device") as err:
        extract_archive(archive, dest, TASK)
    assert err.value.kind == "download" and written[1].endswith(f"{TASK}/dataset.json")
    assert ".extracting" in written[1]  # it was written, but to the staging folder
    assert list(dest.iterdir()) == []  # which is gone, and no half task folder took its place


def test_an_archive_without_the_task_folder_is_refused(layout: Path) -> None:
    archive = _write_tar(layout / "served" / f"{TASK}.tar", [_member("Task09_Spleen/dataset.json", b"{}")])
    with pytest.raises(DataError, match=rf"has no {TASK}/dataset\.json") as err:
        extract_archive(archive, layout / "data" / "msd", TASK)
    assert err.value.kind == "invalid" and list((layout / "data" / "msd").iterdir()) == []


# --- slow mirrors ---------------------------------------------------------------------------------


def _big_archive(path: Path) -> Path:
    """About 300 KiB, so that 128 KiB arrive before the trickle and some remains after it."""
    return _write_tar(path, [*_valid_start(), _member(f"{TASK}/image.bin", bytes(range(256)) * 1200)])


def test_a_trickling_mirror_is_stopped_and_the_next_try_resumes(mirror: _Server, layout: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url_path = mirror.publish(_big_archive(layout / "served" / f"{TASK}.tar"), layout / "registry.txt")
    data = mirror.files[url_path]
    mirror.trickle_after = 128 * 1024
    monkeypatch.setenv("MEDSEG_DOWNLOAD_MIN_RATE", "1000000")
    monkeypatch.setenv("MEDSEG_DOWNLOAD_STALL_SECONDS", "2")
    started = time.monotonic()
    with pytest.raises(DataError, match="what arrived is kept") as err:
        fetch_msd("hippocampus", progress=False)
    assert time.monotonic() - started < 8, "the rate check should stop the transfer within a few seconds"
    assert err.value.kind == "download" and "DownloadTooSlow" in err.value.message
    assert "MEDSEG_DOWNLOAD_MIN_RATE" in err.value.message and "\n" not in str(err.value)
    part = layout / "cache" / "downloads" / f"{TASK}.tar.part"
    kept = part.read_bytes()
    assert len(kept) == 128 * 1024 and data.startswith(kept)  # what arrived before the trickle
    assert not (layout / "data" / "msd" / TASK).exists()

    folder = fetch_msd("hippocampus", progress=False)  # the mirror has recovered
    assert mirror.requests[-1] == (url_path, f"bytes={len(kept)}-") and (folder / "dataset.json").is_file()
    assert not part.exists()


def test_a_download_past_its_deadline_is_stopped(mirror: _Server, layout: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    mirror.publish(_big_archive(layout / "served" / f"{TASK}.tar"), layout / "registry.txt")
    mirror.trickle_after = 1000
    monkeypatch.setenv("MEDSEG_DOWNLOAD_MIN_RATE", "0")  # only the deadline applies
    monkeypatch.setenv("MEDSEG_DOWNLOAD_DEADLINE", "1")
    started = time.monotonic()
    with pytest.raises(DataError, match=r"deadline of 1 s \(MEDSEG_DOWNLOAD_DEADLINE\)") as err:
        fetch_msd("hippocampus", progress=False)
    assert time.monotonic() - started < 6 and err.value.kind == "download"
    assert (layout / "cache" / "downloads" / f"{TASK}.tar.part").is_file()


def test_rate_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MEDSEG_DOWNLOAD_MIN_RATE", "MEDSEG_DOWNLOAD_STALL_SECONDS", "MEDSEG_DOWNLOAD_DEADLINE"):
        monkeypatch.delenv(var, raising=False)
    default = ResumableDownloader(tmp_path / "x.part")
    assert (default.min_rate, default.stall_seconds, default.deadline) == (1024, 60, None)
    assert default.chunk_size <= 64 * 1024
    monkeypatch.setenv("MEDSEG_DOWNLOAD_MIN_RATE", "0")
    monkeypatch.setenv("MEDSEG_DOWNLOAD_DEADLINE", "3600")
    tuned = ResumableDownloader(tmp_path / "x.part")
    assert tuned.min_rate is None and tuned.deadline == 3600
    monkeypatch.setenv("MEDSEG_DOWNLOAD_STALL_SECONDS", "soon")
    with pytest.raises(DataError, match=r"MEDSEG_DOWNLOAD_STALL_SECONDS: expected a positive number.*'soon'"):
        ResumableDownloader(tmp_path / "x.part")
