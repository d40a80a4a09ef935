"""Medical Segmentation Decathlon (MSD) tasks: one generic reader driven by ``dataset.json``.

``dataset.json`` names the classes (``labels``), the channels (``modality``) and the labelled
``training`` pairs, each one 3-D (or 4-D, multi-modal) NIfTI volume, read as a stack of axial slices.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ._io import FileLayout, Item, read_nifti_pair, reading, require_file
from .errors import DataError
from .registry import register_dataset
from .types import Case, DatasetInfo

MSD_URL = "http://medicaldecathlon.com/"
MSD_CITATION = (
    "Antonelli et al., 'The Medical Segmentation Decathlon', Nature Communications 13, 4128 (2022); "
    "Simpson et al., 'A large annotated medical image dataset for the development and evaluation of "
    "segmentation algorithms', arXiv:1902.09063 (2019)."
)


def read_dataset_json(task_dir: str | Path) -> dict:
    """The parsed ``dataset.json`` of an MSD task folder."""
    path = Path(task_dir) / "dataset.json"
    require_file(path, "dataset.json")
    with reading(path, "dataset.json"):
        meta = json.loads(path.read_text(encoding="utf-8"))
    for key in ("labels", "modality", "training"):
        if key not in meta:
            raise DataError(path, f"dataset.json has no {key!r} field", "invalid")
    return meta


def _case_id(file_name: str) -> str:
    return Path(file_name).name.removesuffix(".gz").removesuffix(".nii")


def msd_items(task_dir: Path) -> list[Item]:
    """The labelled training pairs that ``dataset.json`` lists, one item per volume."""
    task_dir = Path(task_dir)
    training = read_dataset_json(task_dir)["training"]
    items = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            raise DataError(task_dir / "dataset.json", f"training entry {i} needs 'image' and 'label'", "invalid")
        items.append(Item(_case_id(entry["image"]), task_dir / entry["image"], task_dir / entry["label"]))
    return items


def _class_names(meta: dict) -> tuple[str, ...]:
    labels = {int(k): str(v) for k, v in meta["labels"].items()}
    return tuple(labels[i] for i in sorted(labels))


def msd_layout(task_dir: str | Path) -> FileLayout:
    """The :class:`FileLayout` of one MSD task, with its class count taken from ``dataset.json``."""
    return FileLayout(msd_items, read_nifti_pair, len(_class_names(read_dataset_json(task_dir))))


def read_msd_task(task_dir: str | Path) -> Iterator[Case]:
    """Read every labelled training volume of an MSD task folder as one :class:`Case` each.

    Intensities stay native; ``patient_id`` is the file name without ``.nii.gz`` (``hippocampus_001``).
    """
    return msd_layout(task_dir)(Path(task_dir))


def msd_info(task_dir: str | Path, name: str | None = None, subdir: str | None = None) -> DatasetInfo:
    """A :class:`DatasetInfo` for any MSD task folder, from its ``dataset.json``.

    ``name`` defaults to ``msd_<name in dataset.json>`` in lower case, ``subdir`` to ``msd/<folder name>``.
    """
    task_dir = Path(task_dir)
    meta = read_dataset_json(task_dir)
    channels = tuple(str(meta["modality"][k]) for k in sorted(meta["modality"], key=int))
    is_ct = any(c.upper() == "CT" for c in channels)
    return DatasetInfo(
        name=name or f"msd_{str(meta.get('name', task_dir.name)).lower()}",
        modality="CT" if is_ct else "MRI",
        class_names=_class_names(meta),
        channel_names=channels,
        licence=str(meta.get("licence", "CC BY-SA 4.0")),
        citation=MSD_CITATION,
        url=MSD_URL,
        description=f"MSD {task_dir.name}: {meta.get('description', '')}".strip(),
        subdir=subdir if subdir is not None else f"msd/{task_dir.name}",
        patient_count=int(meta.get("numTraining", len(meta["training"]))),
        has_raw_hu=is_ct,
    )


def register_msd_task(task_dir: str | Path, name: str | None = None, subdir: str | None = None) -> DatasetInfo:
    """Register another MSD task (e.g. ``Task09_Spleen``) so ``iter_cases(name)`` can read it."""
    info = msd_info(task_dir, name, subdir)
    register_dataset(info)(msd_layout(task_dir))
    return info


HIPPOCAMPUS = DatasetInfo(
    name="msd_hippocampus", modality="MRI", class_names=("background", "anterior", "posterior"),
    channel_names=("T1",), licence="CC BY-SA 4.0", citation=MSD_CITATION, url=MSD_URL,
    description=(
        "MSD Task04_Hippocampus: T1-weighted brain MRI crops around the hippocampus (Vanderbilt "
        "University Medical Center), head (anterior) and body (posterior) labelled; one 1 mm volume "
        "of about 35 x 50 x 35 voxels per subject."
    ),
    subdir="msd/Task04_Hippocampus", patient_count=260,
)

# The class count is fixed here so that importing the package never touches the disk.
register_dataset(HIPPOCAMPUS)(FileLayout(msd_items, read_nifti_pair, HIPPOCAMPUS.num_classes))
