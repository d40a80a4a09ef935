"""Which datasets exist, which are on this machine, and how to get the missing ones.

``medseg data list`` prints :func:`format_dataset_list`; ``medseg data fetch NAME`` calls
:func:`fetch_dataset`. Decathlon (MSD) tasks download without an account, so ``fetch_dataset``
downloads them (checksum-verified, see :mod:`.download`). The other datasets need an account or a
licence click-through; for those ``fetch_dataset`` downloads nothing and returns the exact steps:
where to get the files, their licence, and where to put them under the data root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.errors import DataError
from ..data.registry import dataset_info, dataset_path, list_datasets
from ..paths import data_root
from .download import archive_source, fetch_msd, msd_task_name

DOWNLOAD_ENV = "MEDSEG_NO_DOWNLOAD"  # "1": never download (air-gapped machines, CI)

__all__ = ["ensure_dataset", "fetch_dataset"]


@dataclass(frozen=True)
class DatasetStatus:
    """One registered dataset and whether its files are on this machine."""

    name: str
    modality: str
    licence: str
    present: bool
    path: Path | None  # where the importer looks (None for generated datasets)
    url: str


def _is_present(path: Path) -> bool:
    """A folder that exists and is not empty (an interrupted unzip leaves an empty one)."""
    return path.is_dir() and any(path.iterdir())


def list_local_datasets(root: str | os.PathLike | None = None) -> list[DatasetStatus]:
    """Every registered dataset with its licence and whether it is present under the data root."""
    out = []
    for name in list_datasets():
        info = dataset_info(name)
        if not info.subdir:  # generated on the fly (the phantom): always available
            out.append(DatasetStatus(name, info.modality, info.licence, True, None, info.url))
            continue
        path = dataset_path(name, root)
        out.append(DatasetStatus(name, info.modality, info.licence, _is_present(path), path, info.url))
    return out


def format_dataset_list(root: str | os.PathLike | None = None) -> str:
    """A table of the registered datasets, as ``medseg data list`` prints it."""
    rows = list_local_datasets(root)
    width = max(len(r.name) for r in rows)
    lines = [f"data root: {data_root(root)}", ""]
    for r in rows:
        where = "generated (no download)" if r.path is None else str(r.path) if r.present \
            else f"missing (expected at {r.path})"
        mark = "yes" if r.present else "no "
        lines.append(f"{r.name:<{width}}  {r.modality:<3}  present: {mark}  {where}")
        lines.append(f"{'':<{width}}  licence: {r.licence}")
    missing = [r.name for r in rows if not r.present]
    if missing:
        lines += ["", f"to get a missing dataset: medseg data fetch NAME  ({', '.join(missing)})"]
    return "\n".join(lines)


# --- datasets that cannot be downloaded automatically ---------------------------------------------

# name -> (where to get it, what to do with it); the target folder comes from the registry
_MANUAL: dict[str, tuple[str, str]] = {
    "acdc": (
        "The ACDC challenge data needs a (free) account on the challenge site: "
        "https://www.creatis.insa-lyon.fr/Challenge/acdc/ . The registered 'acdc' dataset reads the "
        "preprocessed HDF5 copy used by SSL4MIS (https://github.com/HiLab-git/SSL4MIS, data/ACDC), "
        "made from that download.",
        "Put the HDF5 files (patientNNN_frameMM.h5 and patientNNN_frameMM_slice_K.h5) directly in the "
        "folder below. To use the official NIfTI download (database/training/patientNNN/...) instead, "
        "see read_acdc_nifti in medseg_tutorial/data/acdc.py.",
    ),
    "lgg": (
        "The LGG MRI segmentation dataset is on Kaggle and needs a Kaggle account: "
        "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation "
        "(or `kaggle datasets download -d mateuszbuda/lgg-mri-segmentation`).",
        "Unzip it so that the patient folders (TCGA_<inst>_<id>_<date>/, each with *_<n>.tif slices and "
        "*_<n>_mask.tif masks) sit directly in the folder below.",
    ),
    "covid_ct": (
        "COVID-SemiSeg (Inf-Net) is linked from the Inf-Net repository "
        "https://github.com/DengPingFan/Inf-Net (section 'COVID-SemiSeg Dataset'); it is built from the "
        "COVID-19 CT segmentation dataset of medicalsegmentation.com.",
        "Extract it so that TrainingSet/ and TestingSet/ (with LungInfection-* and MultiClassInfection-* "
        "inside) are directly in the folder below.",
    ),
}
_MANUAL["covid_ct_multiclass"] = _MANUAL["covid_ct"]


def manual_instructions(name: str, root: str | os.PathLike | None = None) -> str:
    """Step-by-step instructions to obtain dataset ``name`` by hand."""
    info = dataset_info(name)
    source, layout = _MANUAL.get(name, (f"Download it from {info.url or 'its publisher'}.", ""))
    target = dataset_path(name, root)
    return "\n".join([
        f"{name} cannot be downloaded automatically (it needs an account or a licence agreement).",
        f"1. {source}",
        f"   Licence: {info.licence}. Cite: {info.citation}",
        f"2. {layout}".rstrip() if layout else "2. Put the files in the folder below.",
        f"   Folder: {target}",
        "   (the data root is $MEDSEG_DATA_ROOT or --root; it may be read-only once filled)",
        f"3. Check the copy: medseg data check {name}",
    ])


def fetch_dataset(name: str, root: str | os.PathLike | None = None, progress: bool = True) -> str:
    """Download dataset ``name`` if it can be downloaded, else explain how to get it; returns a message.

    Decathlon tasks are downloaded to ``<data root>/msd/<TaskNN_Name>`` (the archive is verified
    against its MD5 first). Nothing is downloaded when the dataset is already present.
    """
    info = dataset_info(name)  # KeyError with the known names for a typo
    if not info.subdir:
        return f"{name} is generated on the fly; there is nothing to download."
    target = dataset_path(name, root)
    if _is_present(target):
        return f"{name} is already present at {target}; check it with: medseg data check {name}"
    if downloadable(name):  # a Decathlon task: public, no account needed
        task = msd_task_name(Path(info.subdir).name)
        folder = fetch_msd(task, dest=data_root(root) / "msd", progress=progress)
        return (f"downloaded {task} to {folder}\nlicence: {info.licence}; cite: {info.citation}\n"
                f"check it with: medseg data check {name}")
    return manual_instructions(name, root)


def downloadable(name: str) -> bool:
    """Whether dataset ``name`` can be downloaded without an account (the Decathlon tasks)."""
    parts = Path(dataset_info(name).subdir or "").parts
    return len(parts) == 2 and parts[0] == "msd"


def ensure_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> bool:
    """Make dataset ``name`` available under the data root if it can be; return whether it is.

    Present files are used as they are. A missing public dataset (an MSD task) is downloaded with
    :func:`fetch_dataset`, unless ``download`` is False or ``$MEDSEG_NO_DOWNLOAD=1``. A missing
    dataset that needs an account, or a download that fails (no network, read-only data root), is
    reported through ``say`` and gives False: callers fall back rather than fail.
    """
    info = dataset_info(name)
    if not info.subdir:  # generated on the fly
        return True
    target = dataset_path(name, root)
    if _is_present(target):
        return True
    if not downloadable(name):
        say(f"{name} is not under {data_root(root)} and needs an account to download: "
            f"`medseg data fetch {name}` explains how to get it.")
        return False
    if download is None:
        download = os.environ.get(DOWNLOAD_ENV) != "1"
    task = msd_task_name(Path(info.subdir).name)
    if not download:
        say(f"{name} is not under {data_root(root)}, and downloads are off ({DOWNLOAD_ENV}=1): "
            f"`medseg data fetch {name}` downloads it.")
        return False
    url = archive_source(task)[0]
    say(f"{name} is not under {data_root(root)}: downloading {url} (licence: {info.licence})")
    try:
        fetch_dataset(name, root, progress=progress)
    except DataError as err:
        say(f"{name}: {err}\nRetry with `medseg data fetch {name}`, or put the files in {target}.")
        return False
    return _is_present(target)
