"""Check a dataset before training: read every file once and report every problem together.

``check_dataset("msd_hippocampus")`` walks a registered dataset; ``check_dataset("some/folder")``
first recognises the layout (an MSD task, the ACDC HDF5 or NIfTI layout, or paired image files).
Each problem names its file, so a student can fix a whole download in one pass instead of
meeting the errors one training run at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..data._io import FileLayout, Item, check_labels, group_items, stack_slices
from ..data.acdc import ACDC, ACDC_H5_LAYOUT, ACDC_NIFTI_LAYOUT
from ..data.errors import DataError
from ..data.msd import msd_info, msd_layout
from ..data.paired import READERS, paired_items, paired_layout, read_paired_item
from ..data.registry import dataset_importer, dataset_info, dataset_path, iter_cases, list_datasets
from ..data.summary import DatasetTally


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: the file at fault, a kind (see ``errors.PROBLEM_KINDS``), words."""

    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}: {self.message}"


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`: all problems, and a summary of what could be read."""

    target: str
    layout: str = ""
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, error: DataError) -> None:
        self.problems.append(Problem(error.path, error.kind, error.message))

    def format(self, max_problems: int = 50) -> str:
        """A human-readable report, as ``medseg data check`` prints it."""
        s = self.summary
        lines = [f"Check of {self.target}" + (f" ({self.layout})" if self.layout else "")]
        if s.get("cases"):
            expected = f" of {s['expected_patients']} expected" if s.get("expected_patients") else ""
            lines.append(
                f"  {s['cases']} cases, {s['patients']} patients{expected}, {s['slices']} slices, "
                f"channels {s['channels']}"
            )
            shapes = ", ".join(f"{k} ({n})" for k, n in list(s["slice_shapes"].items())[:5])
            lines.append(f"  slice shapes (rows x cols): {shapes}" + (", ..." if len(s["slice_shapes"]) > 5 else ""))
            total = sum(s["class_voxels"].values()) or 1
            lines.append(
                "  pixels per class: " + ", ".join(f"{k} {100 * v / total:.2f}%" for k, v in s["class_voxels"].items())
            )
            lines.append(f"  slices without foreground: {s['empty_slices']} of {s['slices']}")
        if self.ok:
            lines.append("OK: no problems found.")
            return "\n".join(lines)
        lines.append(f"{len(self.problems)} problem(s):")
        lines += [f"  {p}" for p in self.problems[:max_problems]]
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


# without declared classes, a mask with more distinct values than this is not a label map
MAX_UNDECLARED_LABELS = 32


def _scan(folder: Path, layout: FileLayout, class_names: tuple[str, ...] | None, report: CheckReport) -> None:
    """Read every item of ``layout`` under ``folder``, recording each DataError instead of stopping."""
    tally = DatasetTally(class_names or ())
    try:
        groups = group_items(layout.list_items(folder))
    except DataError as err:
        report.add(err)
        groups = {}
    else:
        if not groups:
            report.problems.append(Problem(str(folder), "empty", "no images found in this layout"))
    for (patient_id, _group), case_items in groups.items():
        members, volumes = [], []
        for item in case_items:
            try:
                vol = layout.read_item(item)
                if class_names:
                    check_labels(vol.mask, len(class_names), item.mask)
                elif len(np.unique(vol.mask)) > MAX_UNDECLARED_LABELS:
                    raise DataError(item.mask, f"mask holds {len(np.unique(vol.mask))} different values: a label map "
                                    "has a few classes (is it a grey-level image, or does it need a value "
                                    "mapping such as 0/255 -> 0/1?)", "bad_labels")
            except DataError as err:
                report.add(err)
                continue
            members.append(item)
            volumes.append(vol)
        if not volumes:
            continue
        try:
            vol = stack_slices(members, volumes)
        except DataError as err:
            report.add(err)
            continue
        tally.add(patient_id, *vol)
    report.summary = tally.summary()


# --- layout detection for plain folders -----------------------------------------------------------

_IMAGE_MASK_FOLDERS = (("Imgs", "GT"), ("images", "masks"), ("imgs", "masks"), ("images", "labels"), ("image", "label"))


def _sub_items(root: Path, images: str, masks: str) -> list[Item]:
    return paired_items(root / images, root / masks)


def guess_paired_layout(folder: Path) -> FileLayout:
    """Paired files: an images/masks folder pair, else masks beside images (patients = subfolders)."""
    for images, masks in _IMAGE_MASK_FOLDERS:
        if (folder / images).is_dir() and (folder / masks).is_dir():
            return FileLayout(partial(_sub_items, images=images, masks=masks), read_paired_item)
    nested = any(p.parent != folder for p in folder.rglob("*") if p.suffix.lower() in READERS)
    return paired_layout(patient_rule="folder" if nested else None)


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in READERS for p in folder.rglob("*"))


# name -> (does the folder look like this layout?, build its FileLayout and class names); first match wins
DETECTORS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], tuple[FileLayout, tuple[str, ...] | None]]]] = {
    "MSD task": (lambda f: (f / "dataset.json").is_file(), lambda f: (msd_layout(f), msd_info(f).class_names)),
    "ACDC HDF5": (lambda f: any(f.glob("*.h5")), lambda f: (ACDC_H5_LAYOUT, ACDC.class_names)),
    "ACDC NIfTI": (
        lambda f: any(f.glob("patient*/patient*_frame*.nii*")),
        lambda f: (ACDC_NIFTI_LAYOUT, ACDC.class_names),
    ),
    "paired images": (_has_images, lambda f: (guess_paired_layout(f), None)),
}


def _check_folder(folder: Path) -> CheckReport:
    report = CheckReport(str(folder))
    if not folder.is_dir():
        known = ", ".join(list_datasets())
        report.problems.append(
            Problem(str(folder), "missing_file", f"no such folder, nor a registered dataset ({known})")
        )
        return report
    for name, (matches, build) in DETECTORS.items():
        if matches(folder):
            report.layout = name
            try:
                layout, class_names = build(folder)
            except DataError as err:
                report.add(err)
                return report
            _scan(folder, layout, class_names, report)
            return report
    report.problems.append(
        Problem(str(folder), "empty", "no dataset found: no dataset.json, *.h5, patientNNN/*.nii.gz or image files")
    )
    return report


def _check_registered(name: str, root: str | Path | None) -> CheckReport:
    info = dataset_info(name)
    folder = dataset_path(name, root)
    importer = dataset_importer(name)
    report = CheckReport(name, layout=str(folder))
    if info.subdir and not folder.exists():
        report.problems.append(Problem(str(folder), "missing_file", f"dataset {name!r} is not at this path"))
    elif isinstance(importer, FileLayout):
        _scan(folder, importer, info.class_names, report)
    else:
        # an importer that is not a FileLayout can only be read case by case; its first error ends the walk
        tally = DatasetTally(info.class_names)
        try:
            for case in iter_cases(name, root):
                if case.mask is None:
                    report.problems.append(Problem(case.source, "missing_mask", "case has no mask"))
                    continue
                try:
                    check_labels(case.mask, info.num_classes, case.source)
                except DataError as err:
                    report.add(err)
                    continue
                tally.add(case.patient_id, case.image, case.mask, case.spacing)
        except DataError as err:
            report.add(err)
        report.summary = tally.summary()
    report.summary["expected_patients"] = info.patient_count
    return report


def check_dataset(path_or_name: str | Path, root: str | Path | None = None) -> CheckReport:
    """Check a registered dataset (by name, under ``root``) or a dataset folder (layout detected).

    Every file is read; each missing mask, unreadable file, shape mismatch, out-of-range label or
    empty dataset becomes a :class:`Problem` naming its file, and the scan goes on.
    """
    if isinstance(path_or_name, str) and path_or_name in list_datasets():
        return _check_registered(path_or_name, root)
    return _check_folder(Path(path_or_name))
