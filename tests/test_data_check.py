"""check_dataset: broken files written into tmp_path are all reported together, each naming its file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg_tutorial.data import Case, DataError, DatasetInfo, register_dataset, registry, summarize_dataset
from medseg_tutorial.data.msd import read_msd_task
from medseg_tutorial.tools.check import check_dataset


def _nifti(path: Path, arr: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken_msd(tmp_path: Path) -> Path:
    """An MSD task with one good pair and four broken ones, in dataset.json order."""
    task = tmp_path / "Task99_Broken"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 16, 8)).astype(np.float32)
    label = np.zeros((16, 16, 8), np.uint8)
    label[4:8, 4:8, 2:5] = 1
    names = ["good", "truncated", "mismatch", "badlabel", "nomask"]
    for name in names:
        _nifti(task / "imagesTr" / f"{name}.nii.gz", image)
        if name != "nomask":
            _nifti(task / "labelsTr" / f"{name}.nii.gz", label)
    _truncate(task / "imagesTr" / "truncated.nii.gz")
    _nifti(task / "labelsTr" / "mismatch.nii.gz", label[:, :, :6])
    _nifti(task / "labelsTr" / "badlabel.nii.gz", label * 5)
    meta = {
        "name": "Broken", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_msd_problems_are_all_reported_with_their_files(broken_msd: Path) -> None:
    report = check_dataset(str(broken_msd))
    assert report.layout == "MSD task" and not report.ok
    found = {(Path(p.path).relative_to(broken_msd).as_posix(), p.kind) for p in report.problems}
    assert found == {
        ("imagesTr/truncated.nii.gz", "unreadable"),
        ("labelsTr/mismatch.nii.gz", "shape_mismatch"),
        ("labelsTr/badlabel.nii.gz", "bad_labels"),
        ("imagesTr/nomask.nii.gz", "missing_mask"),
    }
    by_kind = {p.kind: p.message for p in report.problems}
    assert "EOFError" in by_kind["unreadable"] or "Compressed" in by_kind["unreadable"]
    assert "labelsTr/nomask.nii.gz" in by_kind["missing_mask"]
    assert "[5] outside the 2 declared classes" in by_kind["bad_labels"]
    assert "(6, 16, 16)" in by_kind["shape_mismatch"] and "(8, 16, 16)" in by_kind["shape_mismatch"]
    # the one good volume is still summarised
    assert report.summary["cases"] == 1 and report.summary["slices"] == 8
    assert report.summary["class_voxels"] == {"background": 8 * 256 - 48, "lesion": 48}
    text = report.format()
    assert "4 problem(s)" in text and all(p.path in text for p in report.problems)


def test_importer_stops_with_a_clear_error_naming_the_file(broken_msd: Path) -> None:
    cases = read_msd_task(broken_msd)
    assert next(cases).patient_id == "good"
    with pytest.raises(DataError, match=r"truncated\.nii\.gz: cannot read image") as err:
        next(cases)
    assert err.value.kind == "unreadable" and err.value.path.endswith("truncated.nii.gz")


def test_paired_problems(tmp_path: Path) -> None:
    patient = tmp_path / "patient01"
    patient.mkdir()
    ok = np.zeros((8, 8), np.uint8)
    for k in (1, 2, 3, 4, 5):
        Image.fromarray(ok + k).save(patient / f"patient01_{k}.png")
    for k in (1, 2, 4):
        Image.fromarray(ok).save(patient / f"patient01_{k}_mask.png")
    (patient / "patient01_2.png").write_bytes(b"this is not a PNG")  # unreadable image
    png = (patient / "patient01_4_mask.png").read_bytes()
    (patient / "patient01_4_mask.png").write_bytes(png[: len(png) // 2])  # truncated mask
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(patient / "patient01_5_mask.png")  # wrong shape
    # patient01_3 has no mask at all

    report = check_dataset(tmp_path)
    assert report.layout == "paired images"
    found = {(Path(p.path).name, p.kind) for p in report.problems}
    assert found == {
        ("patient01_2.png", "unreadable"),
        ("patient01_3.png", "missing_mask"),
        ("patient01_4_mask.png", "unreadable"),
        ("patient01_5_mask.png", "shape_mismatch"),
    }
    assert report.summary["patients"] == 1 and report.summary["slices"] == 1  # only slice 1 is clean


def test_acdc_h5_problems(tmp_path: Path) -> None:
    def write(name: str, image: np.ndarray, label: np.ndarray | None) -> Path:
        with h5py.File(tmp_path / name, "w") as f:
            f["image"] = image
            if label is not None:
                f["label"] = label
        return tmp_path / name

    vol = np.zeros((3, 8, 8), np.float32)
    write("patient001_frame01.h5", vol, np.zeros((3, 8, 8), np.uint8))  # clean
    write("patient002_frame01.h5", vol, np.full((3, 8, 8), 7, np.uint8))  # label outside 0..3
    write("patient003_frame01.h5", vol, None)  # no label dataset
    write("patient004_frame01_slice_1.h5", vol[0], np.zeros((8, 8), np.uint8))
    write("patient004_frame01_slice_2.h5", np.zeros((9, 8), np.float32), np.zeros((9, 8), np.uint8))
    _truncate(write("patient005_frame01.h5", vol, np.zeros((3, 8, 8), np.uint8)))

    report = check_dataset(tmp_path)
    assert report.layout == "ACDC HDF5"
    found = {(Path(p.path).name, p.kind) for p in report.problems}
    assert found == {
        ("patient002_frame01.h5", "bad_labels"),
        ("patient003_frame01.h5", "invalid"),
        ("patient004_frame01_slice_2.h5", "shape_mismatch"),
        ("patient005_frame01.h5", "unreadable"),
    }
    assert report.summary["cases"] == 1


def test_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    report = check_dataset(tmp_path / "empty")
    assert not report.ok and [(p.kind, p.path) for p in report.problems] == [("empty", str(tmp_path / "empty"))]

    (tmp_path / "Imgs").mkdir()
    (tmp_path / "GT").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "Imgs" / "1.png")
    (tmp_path / "Imgs" / "1.png").rename(tmp_path / "Imgs" / "1.txt")  # no image file left
    report = check_dataset(tmp_path)
    assert [(p.kind, p.path) for p in report.problems] == [("empty", str(tmp_path))]

    report = check_dataset(tmp_path / "nowhere")
    assert [p.kind for p in report.problems] == ["missing_file"]
    assert "registered dataset" in report.problems[0].message

    report = check_dataset("msd_hippocampus", root=tmp_path)
    assert [p.kind for p in report.problems] == ["missing_file"]


def test_registered_importer_without_file_layout_is_checked_case_by_case(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # forget the test dataset afterwards
    info = DatasetInfo("check_test_plain", "MRI", ("background", "fg"), ("T1",), "CC0", "none", "http://x")

    @register_dataset(info)
    def _importer(root: Path) -> Iterator[Case]:
        image = np.zeros((2, 1, 4, 4), np.float32)
        yield Case("a", image, np.zeros((2, 4, 4), np.uint8), source="a.bin")
        yield Case("b", image, np.full((2, 4, 4), 3, np.uint8), source="b.bin")

    report = check_dataset("check_test_plain", root=tmp_path)
    assert [(p.path, p.kind) for p in report.problems] == [("b.bin", "bad_labels")]
    assert report.summary["cases"] == 1


def test_real_hippocampus_is_clean(shared_root: Path) -> None:
    report = check_dataset("msd_hippocampus", root=shared_root)
    assert report.ok, report.format()
    s = report.summary
    assert (s["cases"], s["patients"], s["expected_patients"], s["channels"]) == (260, 260, 260, [1])
    assert set(s["class_voxels"]) == {"background", "anterior", "posterior"}
    assert all(n > 0 for n in s["class_voxels"].values())
    assert "OK: no problems found." in report.format()

    summary = summarize_dataset("msd_hippocampus", root=shared_root)
    assert summary["slices"] == s["slices"] and summary["class_voxels"] == s["class_voxels"]
    assert summary["classes"] == ["background", "anterior", "posterior"] and summary["modality"] == "MRI"
