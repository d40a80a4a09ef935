"""Download Medical Segmentation Decathlon tasks with pooch (checksum-verified, cached, resumable).

The archives are the MONAI mirror of the Decathlon, with the MD5 checksums that MONAI's
``DecathlonDataset`` verifies. The tar is kept under ``<cache>/downloads`` so that a second call
only checks it, and it is extracted to ``<data root>/msd/<TaskNN_Name>``, where the registered
importers look (``iter_cases("msd_hippocampus")``).
"""

from __future__ import annotations

from pathlib import Path

import pooch

from .._paths import cache_dir, data_root
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
    """
    name = msd_task_name(task)
    url, known_hash = MSD_ARCHIVES[name]
    dest = Path(dest) if dest is not None else data_root() / "msd"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=f"{name}.tar",
            path=cache_dir() / "downloads",
            # an absolute extract_dir puts the files in dest rather than next to the archive
            processor=pooch.Untar(extract_dir=str(dest.resolve())),
            progressbar=progress,
        )
    except ValueError as err:  # pooch reports a hash mismatch as ValueError
        raise DataError(url, f"download of {name} failed verification: {err}", "checksum") from err
    task_dir = dest / name
    if not (task_dir / "dataset.json").is_file():
        raise DataError(url, f"archive did not extract to {task_dir} with a dataset.json", "invalid")
    return task_dir
