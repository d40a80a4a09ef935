"""Check a dataset before training: read every file once and report every problem together.

``check_dataset("msd_hippocampus")`` walks a registered dataset; ``check_dataset("some/folder")``
first recognises the layout (an MSD task, the ACDC HDF5 or NIfTI layout, or images and masks that
the ``folder`` dataset reads, :mod:`medseg_tutorial.data.folder`). Folder options (mask suffix,
instance masks, subject rule, ...) can be given as a :class:`~medseg_tutorial.data.folder.FolderOptions`;
what they leave open is detected exactly as training detects it, and the report ends with the
``medseg train`` command that reads the folder the same way. Each problem names its file, so a
student can fix a whole download in one pass instead of meeting the errors one training run at a time.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np

from ..data._io import READERS, FileLayout, check_labels, group_items, stack_slices
from ..data.acdc import ACDC, ACDC_H5_LAYOUT, ACDC_NIFTI_LAYOUT
from ..data.errors import DataError
from ..data.folder import (
    FolderOptions,
    describe_layout,
    detect_layout,
    folder_items,
    inferred_class_names,
    is_volume,
    read_folder_item,
)
from ..data.msd import msd_info, msd_layout
from ..data.nnunet import is_msd_task, is_nnunet_raw, nnunet_info, nnunet_layout
from ..data.registry import dataset_importer, dataset_info, dataset_path, iter_cases, list_datasets
from ..data.summary import DatasetTally
from ..errors import ConfigError
from ..paths import REPO


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
    details: str = ""  # how the files were read (the folder layout in words)
    next_step: str = ""  # the command to run next when the check passes

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, error: DataError) -> None:
        self.problems.append(Problem(error.path, error.kind, error.message))

    def format(self, max_problems: int = 50) -> str:
        """A human-readable report, as ``medseg data check`` prints it."""
        s = self.summary
        lines = [f"Check of {self.target}" + (f" ({self.layout})" if self.layout else "")]
        if self.details:
            lines.append(f"  layout: {self.details}")
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
            if self.next_step:
                lines.append(f"Next: {self.next_step}")
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


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in READERS or is_volume(p) for p in folder.rglob("*") if not p.name.startswith("."))


def folder_check_layout(folder: Path, options: FolderOptions | None = None) -> tuple[FileLayout, FolderOptions]:
    """The layout the ``folder`` dataset reads ``folder`` with: ``options`` completed by detection."""
    opts = detect_layout(folder, options)
    n = len(opts.class_names) if opts.class_names else None
    return FileLayout(partial(folder_items, opts=opts), partial(read_folder_item, opts=opts), n), opts


def train_command(folder: Path, given: FolderOptions | None) -> str:
    """``medseg train`` for ``folder``: the shipped folder config plus the options that were given."""
    words = ["medseg", "train", "--config", "folder", f"data.path={folder}"]
    default = FolderOptions()
    for f in fields(FolderOptions) if given is not None else ():
        value = getattr(given, f.name)
        if value != getattr(default, f.name):
            words.append(f"data.folder.{f.name}={_yaml_value(value)}")
    return " ".join(shlex.quote(w) for w in words)


def _yaml_value(value: object) -> str:
    """``value`` as the YAML that a ``KEY=VALUE`` override reads back as ``value``."""
    import json

    import yaml

    if isinstance(value, str):  # a string YAML would read as something else ("", "1", "null", "a: b") is quoted
        try:
            plain = bool(value) and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)  # JSON strings are YAML double-quoted strings
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _folder_report(folder: Path, options: FolderOptions | None, report: CheckReport) -> None:
    try:
        layout, opts = folder_check_layout(folder, options)
    except (DataError, ConfigError) as err:
        report.add(err if isinstance(err, DataError) else DataError(folder, str(err), "invalid"))
        return
    report.details = describe_layout(opts)
    _scan(folder, layout, tuple(opts.class_names) if opts.class_names else None, report)
    if not opts.class_names and report.summary.get("class_voxels"):  # the names training will infer
        names = inferred_class_names(len(report.summary["class_voxels"]) - 1)
        report.summary["class_voxels"] = dict(zip(names, report.summary["class_voxels"].values()))
    report.next_step = train_command(folder, options)


def _msd(folder: Path) -> tuple[FileLayout, tuple[str, ...] | None]:
    return msd_layout(folder), msd_info(folder).class_names


def _nnunet(folder: Path) -> tuple[FileLayout, tuple[str, ...] | None]:
    return nnunet_layout(folder), nnunet_info(folder).class_names


# name -> (does the folder look like this layout?, build its FileLayout and class names); first match wins.
# Anything else with image files is read as the folder dataset reads it (_folder_report).
DETECTORS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], tuple[FileLayout, tuple[str, ...] | None]]]] = {
    "nnU-Net v2 raw dataset": (is_nnunet_raw, _nnunet),  # before MSD: both have a dataset.json
    "MSD task": (is_msd_task, _msd),
    "ACDC HDF5": (lambda f: any(f.glob("*.h5")), lambda f: (ACDC_H5_LAYOUT, ACDC.class_names)),
    "ACDC NIfTI": (
        lambda f: any(f.glob("patient*/patient*_frame*.nii*")),
        lambda f: (ACDC_NIFTI_LAYOUT, ACDC.class_names),
    ),
}


def _check_folder(folder: Path, options: FolderOptions | None = None) -> CheckReport:
    report = CheckReport(str(folder))
    if not folder.is_dir():
        known = ", ".join(list_datasets())
        report.problems.append(
            Problem(str(folder), "missing_file", f"no such folder, nor a registered dataset ({known})")
        )
        return report
    for name, (matches, build) in DETECTORS.items() if options is None else ():
        if matches(folder):
            report.layout = name
            try:
                layout, class_names = build(folder)
            except DataError as err:
                report.add(err)
                return report
            _scan(folder, layout, class_names, report)
            return report
    if options is not None or _has_images(folder):
        report.layout = "paired images"
        _folder_report(folder, options, report)
        return report
    report.problems.append(
        Problem(str(folder), "empty", "no dataset found: no MSD or nnU-Net v2 dataset.json, *.h5, patientNNN/*.nii.gz or image "
                "files")
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


def check_dataset(path_or_name: str | Path, root: str | Path | None = None,
                  options: FolderOptions | None = None) -> CheckReport:
    """Check a registered dataset (by name, under ``root``) or a dataset folder (layout detected).

    ``options`` reads the folder as the ``folder`` dataset with these options (the rest detected).
    Every file is read; each missing mask, unreadable file, shape mismatch, out-of-range label or
    empty dataset becomes a :class:`Problem` naming its file, and the scan goes on. ``root`` applies
    to a registered name only; with a folder it is refused (``ValueError``) rather than ignored.
    """
    if isinstance(path_or_name, str) and path_or_name in list_datasets():
        if options is not None:
            raise ValueError(f"folder options apply to a folder; {path_or_name!r} is a registered dataset")
        report = _check_registered(path_or_name, root)
        if (REPO / "configs" / f"{path_or_name}.yaml").is_file():
            report.next_step = f"medseg train --config {path_or_name}" + (
                f" data.root={shlex.quote(str(root))}" if root else "")
        return report
    if root is not None:
        raise ValueError(f"--root applies to registered dataset names; {str(path_or_name)!r} is read as a folder "
                         f"(registered: {', '.join(list_datasets())})")
    return _check_folder(Path(path_or_name), options)
