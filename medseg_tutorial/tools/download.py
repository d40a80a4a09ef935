"""Download Medical Segmentation Decathlon tasks with pooch (checksum-verified, cached, resumable).

The archives are the MONAI mirror of the Decathlon, with the MD5 checksums that MONAI's
``DecathlonDataset`` verifies. The tar is kept under ``<cache>/downloads`` so that a second call
only checks it, and it is extracted to ``<data root>/msd/<TaskNN_Name>``, where the registered
importers look (``iter_cases("msd_hippocampus")``). An interrupted download leaves a ``.part`` file
there, and the next call continues it with an HTTP range request instead of starting again.

Two environment variables point the downloads elsewhere (a local mirror, an air-gapped course room):

* ``MEDSEG_MSD_MIRROR``: a base URL serving the same archives (same names, same checksums);
* ``MEDSEG_DOWNLOAD_REGISTRY``: a file of ``TaskNN_Name URL HASH`` lines (pooch's registry format
  plus a URL) that replaces individual entries, for mirrors that repackage the archives.

Since a mirror or registry can serve anything whose checksum it also supplies, the archive is not
trusted: :func:`extract_archive` refuses links, special files and paths that leave the target, and
extracts to a hidden folder that is renamed into place only when complete. A transfer slower than
``MEDSEG_DOWNLOAD_MIN_RATE`` bytes/s (default 1024) over ``MEDSEG_DOWNLOAD_STALL_SECONDS`` (default
60), or longer than ``MEDSEG_DOWNLOAD_DEADLINE`` seconds (default: none), is stopped; what arrived is
kept and the next call continues it.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import pooch

from ..data.errors import DataError
from ..paths import cache_dir, data_root

_MONAI_MIRROR = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
_MD5 = {
    "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
}
# task -> (archive URL, pooch known_hash)
MSD_ARCHIVES: dict[str, tuple[str, str]] = {
    task: (f"{_MONAI_MIRROR}/{task}.tar", f"md5:{md5}") for task, md5 in _MD5.items()
}
MIRROR_ENV = "MEDSEG_MSD_MIRROR"
REGISTRY_ENV = "MEDSEG_DOWNLOAD_REGISTRY"
MIN_RATE_ENV = "MEDSEG_DOWNLOAD_MIN_RATE"
STALL_ENV = "MEDSEG_DOWNLOAD_STALL_SECONDS"
DEADLINE_ENV = "MEDSEG_DOWNLOAD_DEADLINE"
# Generous for real archives (Task04 is 27 MB, the others GBs): only a link that is all but dead fails.
DEFAULT_MIN_RATE = 1024.0
DEFAULT_STALL_SECONDS = 60.0


def archive_source(task: str) -> tuple[str, str]:
    """``(url, known_hash)`` of an MSD task's archive, after the mirror and registry overrides."""
    url, known_hash = MSD_ARCHIVES[task]
    if mirror := os.environ.get(MIRROR_ENV):
        url = f"{mirror.rstrip('/')}/{task}.tar"
    if registry := os.environ.get(REGISTRY_ENV):
        path = Path(registry).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise DataError(path, f"cannot read the download registry ({REGISTRY_ENV}): {err}", "missing_file") from err
        for number, line in enumerate(lines, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 3:
                raise DataError(path, f"line {number}: expected 'TaskNN_Name URL HASH', got {line.strip()!r}",
                                "invalid")
            if fields[0] == task:
                url, known_hash = fields[1], fields[2]
    return url, known_hash


class DownloadTooSlow(TimeoutError):
    """A transfer ran past its deadline or below the minimum rate; the partial file is kept."""


def _env_number(name: str, default: float | None, *, zero_is_off: bool = True) -> float | None:
    """A non-negative number from environment variable ``name``; unset or empty gives ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_is_off):
        rule = "a non-negative number (0 switches the check off)" if zero_is_off else "a positive number"
        raise DataError(name, f"expected {rule} in this environment variable, got {raw!r}", "invalid")
    return value or None


class _Watchdog:
    """Stops a transfer that runs past ``deadline`` or below ``min_rate`` over ``window`` seconds.

    requests' timeout bounds each socket read, so a server sending a byte every few seconds would
    never trip it, and a chunk read blocks until the whole chunk has arrived. Hence a thread that
    samples the byte count and, when the transfer is too slow, shuts the socket down: that
    unblocks the read in the downloading thread, which then raises :class:`DownloadTooSlow`.
    """

    def __init__(self, response: object, start: float, deadline: float | None, min_rate: float | None,
                 window: float) -> None:
        self.start, self.deadline, self.min_rate, self.window = start, deadline, min_rate, window
        self.received = 0  # bytes so far, updated by the downloading thread
        self.reason: str | None = None
        self._sock = _socket_of(response)
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medseg-download-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        samples = deque([(time.monotonic(), 0)])  # (time, bytes), reaching back one window
        while not self._finished.wait(min(1.0, self.window / 4)):
            now, received = time.monotonic(), self.received
            if self.deadline is not None and now - self.start > self.deadline:
                self.reason = (f"stopped after the deadline of {self.deadline:g} s ({DEADLINE_ENV}); "
                               f"{received} bytes had arrived")
            elif self.min_rate:
                samples.append((now, received))
                while len(samples) > 1 and samples[1][0] <= now - self.window:
                    samples.popleft()
                then, before = samples[0]
                if now - then >= self.window and (received - before) / (now - then) < self.min_rate:
                    self.reason = (f"only {received - before} bytes in the last {now - then:.1f} s, under the "
                                   f"minimum rate of {self.min_rate:.0f} bytes/s ({MIN_RATE_ENV}, measured over "
                                   f"{STALL_ENV}={self.window:g} s)")
            if self.reason:
                if self._sock is not None:
                    try:
                        self._sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed: the read has ended anyway
                return

    def stop(self) -> None:
        self._finished.set()
        self._thread.join()
        if self._sock is not None:
            self._sock.close()  # our duplicate only; the response closes its own


def _socket_of(response: object) -> socket.socket | None:
    """A duplicate of the socket under a streaming ``requests`` response, or None if unreachable.

    The connection object drops its socket once the server announces ``Connection: close`` and
    closing the response from another thread blocks on the reader's lock, so the watchdog holds
    its own descriptor: shutting it down ends the transfer, and it cannot be reused meanwhile.
    """
    try:
        return socket.socket(fileno=os.dup(response.raw.fileno()))  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        pass
    sock = getattr(getattr(getattr(response, "raw", None), "connection", None), "sock", None)
    if sock is None:
        return None
    try:
        return sock.dup()
    except OSError:
        return None


class ResumableDownloader:
    """A pooch downloader that keeps partial data in ``part`` and continues it with a Range request.

    pooch streams into a temporary file and deletes it on any error, so an interrupted download of a
    large archive would start from zero. This one appends to ``part`` (kept across calls) and hands
    the complete file to pooch, which then checks the hash; a bad file is deleted, never resumed.

    ``timeout`` bounds each read; ``deadline`` (seconds) the whole transfer and ``min_rate``
    (bytes/s) its average over any ``stall_seconds`` window. ``None`` takes each of these three from
    its environment variable (``MEDSEG_DOWNLOAD_DEADLINE``, ``_MIN_RATE``, ``_STALL_SECONDS``), else
    the default (no deadline, 1024 bytes/s over 60 s); 0 switches a deadline or rate check off. A
    transfer that breaks one raises :class:`DownloadTooSlow` and keeps what arrived in ``part``.
    """

    def __init__(self, part: Path, progress: bool = True, timeout: float = 30.0, *,
                 deadline: float | None = None, min_rate: float | None = None,
                 stall_seconds: float | None = None) -> None:
        self.part, self.progress, self.timeout = Path(part), progress, timeout
        self.deadline = _env_number(DEADLINE_ENV, None) if deadline is None else deadline or None
        self.min_rate = _env_number(MIN_RATE_ENV, DEFAULT_MIN_RATE) if min_rate is None else min_rate or None
        self.stall_seconds = (_env_number(STALL_ENV, DEFAULT_STALL_SECONDS, zero_is_off=False)
                              if stall_seconds is None else stall_seconds)
        if not self.stall_seconds or self.stall_seconds <= 0:
            raise ValueError(f"stall_seconds must be positive, got {self.stall_seconds!r}")
        # The watchdog sees bytes only per finished chunk: keep a chunk well under one window's worth
        # at the minimum rate, or a link just above the minimum would look stalled between chunks.
        wanted = int(self.min_rate * self.stall_seconds / 8) if self.min_rate else 1 << 16
        self.chunk_size = min(1 << 16, max(1 << 10, wanted))

    def __call__(self, url: str, output_file: str, pooch_obj: object, check_only: bool = False) -> bool | None:
        import requests

        if check_only:
            return requests.head(url, allow_redirects=True, timeout=self.timeout).ok
        start = time.monotonic()
        self.part.parent.mkdir(parents=True, exist_ok=True)
        offset = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code != 416:  # 416: nothing left to fetch, the part is complete
                response.raise_for_status()
                resumed = response.status_code == 206
                total = int(response.headers.get("content-length", 0)) + (offset if resumed else 0)
                bar = _progress_bar(total, offset if resumed else 0, self.progress, Path(output_file).name)
                watchdog = _Watchdog(response, start, self.deadline, self.min_rate, self.stall_seconds)
                try:
                    with open(self.part, "ab" if resumed else "wb") as f:
                        for chunk in response.iter_content(chunk_size=self.chunk_size):
                            f.write(chunk)
                            bar.update(len(chunk))
                            watchdog.received += len(chunk)
                except requests.RequestException as err:
                    if watchdog.reason:  # the read failed because the watchdog shut the socket
                        raise DownloadTooSlow(watchdog.reason) from err
                    raise
                finally:
                    watchdog.stop()
                    bar.close()
                if watchdog.reason:  # without a Content-Length the shut socket reads as a clean end
                    raise DownloadTooSlow(watchdog.reason)
        os.replace(self.part, output_file)
        return None


def _progress_bar(total: int, initial: int, enabled: bool, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, desc=f"downloading {name}", leave=True)


def msd_task_name(task: str) -> str:
    """Full task name from ``"Task04_Hippocampus"``, ``"Task04"`` or ``"hippocampus"`` (any case)."""
    key = task.lower()
    for name in MSD_ARCHIVES:
        number, _, title = name.partition("_")
        if key in (name.lower(), number.lower(), title.lower()):
            return name
    raise KeyError(f"unknown MSD task {task!r}; known: {', '.join(MSD_ARCHIVES)}")


_FilterError: type[Exception] | tuple[()] = getattr(tarfile, "FilterError", ())  # () before 3.10.12


def _member_problem(member: tarfile.TarInfo, root: str) -> str | None:
    """Why ``member`` may not be extracted into ``root`` (a fresh, empty folder), or None."""
    if member.issym():
        return f"it is a symbolic link (to {member.linkname!r}); Decathlon archives contain none"
    if member.islnk():
        return f"it is a hard link (to {member.linkname!r}); Decathlon archives contain none"
    if member.ischr() or member.isblk():
        return "it is a device file"
    if member.isfifo():
        return "it is a FIFO (named pipe)"
    if not (member.isreg() or member.isdir()):
        return f"it is a special file (tar type {member.type!r})"
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        return "its path is absolute"
    target = os.path.normpath(os.path.join(root, member.name))
    if os.path.commonpath([root, target]) != root:
        return "its path leads outside the extraction folder"
    if target == root and not member.isdir():
        return "it has an empty name"
    return None


def _extract_checked(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: str) -> None:
    """Extract members that passed :func:`_member_problem`, dropping setuid/setgid/sticky bits."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: our checks once more, and sane modes
        tar.extractall(root, members=members, filter="data")
        return
    # Older Pythons: the same modes by hand. Without links or absolute paths, and in a fresh folder,
    # no write can land outside root; ownership is never set (set_attrs=False).
    for member in members:
        tar.extract(member, root, set_attrs=False)
        path = os.path.join(root, member.name)
        if member.isdir():
            os.chmod(path, 0o755)  # tarfile makes it 0o700, meant to be fixed by the attributes we skip
        else:
            mode = member.mode & 0o755  # no setuid/setgid/sticky, no group/other write
            os.chmod(path, (mode if mode & 0o100 else mode & ~0o111) | 0o600)
            os.utime(path, (member.mtime, member.mtime))


def extract_archive(archive: str | Path, dest: str | Path, name: str) -> Path:
    """Extract the MSD task ``name`` from tar ``archive`` to ``<dest>/<name>``; return that folder.

    Every member is checked before anything is written: a link, a device, FIFO or other special
    file, an absolute path or one that leaves the target raises :class:`DataError` (kind
    ``"invalid"``) naming the member. The files go to a hidden folder in ``dest`` that is renamed
    to ``<dest>/<name>`` only once complete, so an interrupted extraction leaves no task folder;
    anything in the archive outside ``<name>/`` (macOS ``._*`` files) is dropped.
    """
    archive, dest = Path(archive), Path(dest)
    task_dir = dest / name
    if task_dir.is_symlink() or (task_dir.exists() and (not task_dir.is_dir() or any(task_dir.iterdir()))):
        raise DataError(task_dir, "exists but has no dataset.json (an interrupted copy?); move it away or "
                        "delete it, then fetch again", "invalid")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise DataError(archive, f"cannot open the archive as a tar file ({err})", "unreadable") from err
    with tar:
        try:
            members = tar.getmembers()
        except tarfile.TarError as err:
            raise DataError(archive, f"the archive is corrupt ({err})", "unreadable") from err
        try:
            dest.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".extracting", dir=dest))
        except OSError as err:
            raise DataError(dest, f"cannot create a folder to extract {archive.name} ({err.strerror or err})",
                            "download") from err
        try:
            root = os.path.realpath(staging)
            for member in members:
                if problem := _member_problem(member, root):
                    raise DataError(archive, f"refusing to extract member {member.name!r}: {problem}", "invalid")
            try:
                _extract_checked(tar, members, root)
            except _FilterError as err:  # the data filter refusing what our checks let through
                raise DataError(archive, f"refusing to extract member {err.tarinfo.name!r}: {err}",
                                "invalid") from err
            except tarfile.TarError as err:
                raise DataError(archive, f"the archive is corrupt ({err})", "unreadable") from err
            except OSError as err:
                raise DataError(dest, f"cannot extract {archive.name} ({err.strerror or err})", "download") from err
            if not (staging / name / "dataset.json").is_file():
                raise DataError(archive, f"the archive has no {name}/dataset.json", "invalid")
            if task_dir.is_dir() and not task_dir.is_symlink():
                task_dir.rmdir()  # empty (checked above): rename cannot replace a folder everywhere
            try:
                os.rename(staging / name, task_dir)
            except OSError as err:
                if not (task_dir / "dataset.json").is_file():  # else a concurrent fetch got there first
                    raise DataError(task_dir, f"cannot move the extracted files into place ({err.strerror or err})",
                                    "download") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return task_dir


def fetch_msd(task: str, dest: str | Path | None = None, progress: bool = True) -> Path:
    """Download (once) and extract an MSD task; return its folder ``<dest>/<TaskNN_Name>``.

    ``dest`` defaults to ``<data root>/msd``. The archive is verified against its known MD5 before
    extraction; a mismatch raises :class:`DataError` (kind ``"checksum"``) and the file is deleted.
    A failed transfer raises :class:`DataError` (kind ``"download"``) and the next call resumes it.
    """
    import requests  # pooch's own dependency

    name = msd_task_name(task)
    url, known_hash = archive_source(name)
    dest = Path(dest) if dest is not None else data_root() / "msd"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(dest, f"cannot create the folder for {name} ({err.strerror}); point MEDSEG_DATA_ROOT "
                        "at a writable folder", "download") from err
    downloads = cache_dir() / "downloads"
    downloader = ResumableDownloader(downloads / f"{name}.tar.part", progress=progress)  # may reject the env
    try:
        archive = pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=f"{name}.tar",
            path=downloads,
            downloader=downloader,
        )
    except ValueError as err:  # pooch reports a hash mismatch as ValueError
        raise DataError(url, f"download of {name} failed verification: {err}", "checksum") from err
    except (requests.RequestException, OSError) as err:
        raise DataError(url, f"could not download {name} ({type(err).__name__}: {err}); what arrived is kept "
                        f"in {downloads} and the next try continues it", "download") from err
    task_dir = dest / name
    if not (task_dir / "dataset.json").is_file():  # also when the archive is cached but the folder was deleted
        extract_archive(archive, dest, name)
    if not (task_dir / "dataset.json").is_file():
        raise DataError(url, f"archive did not extract to {task_dir} with a dataset.json", "invalid")
    return task_dir
