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
"""

from __future__ import annotations

import os
from pathlib import Path

import pooch

from ..paths import cache_dir, data_root
from .errors import DataError

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


class ResumableDownloader:
    """A pooch downloader that keeps partial data in ``part`` and continues it with a Range request.

    pooch streams into a temporary file and deletes it on any error, so an interrupted download of a
    large archive would start from zero. This one appends to ``part`` (kept across calls) and hands
    the complete file to pooch, which then checks the hash; a bad file is deleted, never resumed.
    """

    def __init__(self, part: Path, progress: bool = True, timeout: float = 30.0) -> None:
        self.part, self.progress, self.timeout = Path(part), progress, timeout

    def __call__(self, url: str, output_file: str, pooch_obj: object, check_only: bool = False) -> bool | None:
        import requests

        if check_only:
            return requests.head(url, allow_redirects=True, timeout=self.timeout).ok
        self.part.parent.mkdir(parents=True, exist_ok=True)
        offset = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code != 416:  # 416: nothing left to fetch, the part is complete
                response.raise_for_status()
                resumed = response.status_code == 206
                total = int(response.headers.get("content-length", 0)) + (offset if resumed else 0)
                bar = _progress_bar(total, offset if resumed else 0, self.progress, Path(output_file).name)
                with open(self.part, "ab" if resumed else "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
                bar.close()
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
    try:
        archive = pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=f"{name}.tar",
            path=downloads,
            downloader=ResumableDownloader(downloads / f"{name}.tar.part", progress=progress),
        )
    except ValueError as err:  # pooch reports a hash mismatch as ValueError
        raise DataError(url, f"download of {name} failed verification: {err}", "checksum") from err
    except (requests.RequestException, OSError) as err:
        raise DataError(url, f"could not download {name} ({type(err).__name__}: {err}); what arrived is kept "
                        f"in {downloads} and the next try continues it", "download") from err
    task_dir = dest / name
    if not (task_dir / "dataset.json").is_file():  # also when the archive is cached but the folder was deleted
        # an absolute extract_dir puts the files in dest rather than next to the archive
        pooch.Untar(extract_dir=str(dest.resolve()))(archive, "download", None)
    if not (task_dir / "dataset.json").is_file():
        raise DataError(url, f"archive did not extract to {task_dir} with a dataset.json", "invalid")
    return task_dir
