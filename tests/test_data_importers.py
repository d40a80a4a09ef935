"""Dataset importers on the real mirrors (shared_root) and on tiny files written here, plus fetch_msd offline."""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg_tutorial.data import DataError, dataset_info, iter_cases, registry
from medseg_tutorial.data.acdc import acdc_h5_items, acdc_official_split, read_acdc_nifti, read_info_cfg
from medseg_tutorial.data.folder import FolderOptions, folder_dataset
from medseg_tutorial.data.msd import msd_info, read_msd_task, register_msd_task
from medseg_tutorial.tools import download as download_module
from medseg_tutorial.tools.download import fetch_msd, msd_task_name

OUR_DATASETS = ["msd_hippocampus", "acdc", "lgg", "covid_ct", "covid_ct_multiclass"]


def _collect(name: str, root: Path) -> dict:
    """One pass over a dataset keeping only what the assertions need (keeps memory and time low)."""
    out = {"cases": 0, "patients": [], "groups": [], "labels": set(), "channels": set(), "shapes": set(),
           "slices": 0, "spacing": set(), "first": None}
    for case in iter_cases(name, root):
        assert case.image.dtype == np.float32 and case.image.ndim == 4
        assert np.issubdtype(case.mask.dtype, np.integer)
        out["cases"] += 1
        out["patients"].append(case.patient_id)
        out["groups"].append(case.group)
        out["labels"] |= set(np.unique(case.mask).tolist())
        out["channels"].add(case.image.shape[1])
        out["shapes"].add(case.image.shape[2:])
        out["slices"] += case.image.shape[0]
        out["spacing"].add(case.spacing)
        out["first"] = out["first"] or case
    return out


# --- real data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OUR_DATASETS)
def test_registered_info_is_complete(name: str, shared_root: Path) -> None:
    info = dataset_info(name)
    assert info.modality in {"MRI", "CT"}
    assert info.class_names[0] == "background" and info.num_classes >= 2
    assert info.licence and info.citation and info.url.startswith("http") and info.description
    assert info.patient_count and info.in_channels >= 1
    assert (shared_root / info.subdir).is_dir()


def test_hippocampus(shared_root: Path) -> None:
    got = _collect("msd_hippocampus", shared_root)
    assert got["cases"] == 260 and len(set(got["patients"])) == 260
    assert dataset_info("msd_hippocampus").class_names == ("background", "anterior", "posterior")
    assert got["labels"] == {0, 1, 2}
    assert got["channels"] == {1}
    assert got["spacing"] == {(1.0, 1.0, 1.0)}
    # slices run along the last NIfTI axis; rows = y, cols = x
    case = got["first"]
    raw = nib.load(case.source).get_fdata()
    np.testing.assert_array_equal(case.image[:, 0], raw.transpose(2, 1, 0))
    assert case.patient_id == "hippocampus_001"


@pytest.fixture(scope="module")
def acdc(shared_root: Path) -> dict:
    return _collect("acdc", shared_root)


def test_acdc_counts(acdc: dict) -> None:
    assert acdc["cases"] == 200 and len(set(acdc["patients"])) == 100
    assert set(acdc["groups"]) == {"frame01", "frame02"}
    assert acdc["labels"] == {0, 1, 2, 3}
    assert acdc["channels"] == {1} and acdc["spacing"] == {(1.0, 1.0, 1.0)}
    assert acdc["slices"] == 1902  # the number of lines of all_slices.list


def test_acdc_slice_files_are_stacked_in_order(shared_root: Path) -> None:
    data = shared_root / "acdc/ACDC/data"
    case = next(c for c in iter_cases("acdc", shared_root) if c.patient_id == "patient003")
    assert case.group == "frame01"
    files = sorted(data.glob("patient003_frame01_slice_*.h5"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert case.image.shape[0] == len(files) >= 2
    np.testing.assert_array_equal(case.slice_index, np.arange(len(files)))
    for k in (0, len(files) - 1):
        with h5py.File(files[k]) as f:
            np.testing.assert_array_equal(case.image[k, 0], f["image"][()])
            np.testing.assert_array_equal(case.mask[k], f["label"][()])


def test_acdc_official_split(shared_root: Path) -> None:
    split = acdc_official_split(shared_root / "acdc/ACDC/data")
    assert [len(split[p]) for p in ("train", "val", "test")] == [70, 10, 20]
    parts = [set(split[p]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == {item.patient_id for item in acdc_h5_items(shared_root / "acdc/ACDC/data")}


def test_lgg(shared_root: Path) -> None:
    got = _collect("lgg", shared_root)
    assert len(set(got["patients"])) == 14 and got["cases"] == 14
    assert dataset_info("lgg").patient_count == 110  # the full set; the mirror holds 14
    assert got["channels"] == {3} and got["shapes"] == {(256, 256)}
    assert got["labels"] == {0, 1}
    case = got["first"]
    assert case.patient_id == "TCGA_CS_4941_19960909"
    assert np.all(np.diff(case.slice_index) > 0) and case.slice_index[0] == 1
    # slice numbers are numeric (…_2 before …_10), and 0/255 masks became 0/1
    k = int(np.flatnonzero(case.slice_index == 10)[0])
    folder = Path(case.source)
    mask = tifffile.imread(folder / f"{case.patient_id}_10_mask.tif")
    np.testing.assert_array_equal(case.mask[k], mask // 255)
    np.testing.assert_array_equal(case.image[k], tifffile.imread(folder / f"{case.patient_id}_10.tif").transpose(2, 0, 1))


def test_covid_binary(shared_root: Path) -> None:
    got = _collect("covid_ct", shared_root)
    assert got["cases"] == 98 and len(set(got["patients"])) == 98
    assert got["groups"].count("train") == 50 and got["groups"].count("test") == 48
    assert all(p.startswith(g + "_") for p, g in zip(got["patients"], got["groups"]))
    assert got["labels"] == {0, 1} and got["channels"] == {1}


def test_covid_multiclass_reads_palette_indices(shared_root: Path) -> None:
    got = _collect("covid_ct_multiclass", shared_root)
    assert got["cases"] == 98
    assert got["labels"] == {0, 1, 2}  # class 2 (consolidation) is present
    case = next(c for c in iter_cases("covid_ct_multiclass", shared_root) if c.patient_id == "train_0")
    gt = Image.open(shared_root / "covid19-ct-semiseg/TrainingSet/MultiClassInfection-Train/GT/0.png")
    assert gt.mode == "P"
    np.testing.assert_array_equal(case.mask[0], np.array(gt))


# --- synthetic MSD and ACDC NIfTI ---------------------------------------------------------------


def _write_msd_task(task_dir: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                    zooms=(0.8, 0.9, 3.0), modality=None) -> None:
    (task_dir / "imagesTr").mkdir(parents=True)
    (task_dir / "labelsTr").mkdir()
    affine = np.diag([*zooms, 1.0])
    for name, arr in images.items():
        nib.save(nib.Nifti1Image(arr, affine), task_dir / "imagesTr" / f"{name}.nii.gz")
    for name, arr in labels.items():
        nib.save(nib.Nifti1Image(arr, affine), task_dir / "labelsTr" / f"{name}.nii.gz")
    meta = {
        "name": "Tiny", "description": "test task", "licence": "CC BY-SA 4.0",
        "modality": modality or {"0": "MRI"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(images),
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in images],
    }
    (task_dir / "dataset.json").write_text(json.dumps(meta))


def test_read_msd_task_multimodal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # forget the test dataset afterwards
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 5, 4, 2)).astype(np.float32)  # x, y, z, channel
    label = (rng.random((6, 5, 4)) > 0.5).astype(np.uint8)
    task = tmp_path / "msd" / "Task05_Tiny"
    _write_msd_task(task, {"tiny_001": image}, {"tiny_001": label}, modality={"0": "T2", "1": "ADC"})

    (case,) = list(read_msd_task(task))
    assert case.patient_id == "tiny_001"
    assert case.image.shape == (4, 2, 5, 6) and case.mask.shape == (4, 5, 6)
    np.testing.assert_allclose(case.spacing, (3.0, 0.9, 0.8), rtol=1e-6)
    np.testing.assert_allclose(case.image[:, 1], image[..., 1].transpose(2, 1, 0))
    np.testing.assert_array_equal(case.mask, label.transpose(2, 1, 0))

    info = msd_info(task)
    assert info.name == "msd_tiny" and info.channel_names == ("T2", "ADC") and info.in_channels == 2
    assert info.class_names == ("background", "lesion") and info.subdir == "msd/Task05_Tiny"
    assert info.modality == "MRI" and info.patient_count == 1
    register_msd_task(task, name="msd_tiny_importer_test")
    (again,) = list(iter_cases("msd_tiny_importer_test", root=tmp_path))
    np.testing.assert_array_equal(again.image, case.image)


def test_read_msd_task_rejects_labels_outside_dataset_json(tmp_path: Path) -> None:
    task = tmp_path / "Task06_Bad"
    label = np.zeros((4, 4, 3), np.uint8)
    label[0, 0, 0] = 4
    _write_msd_task(task, {"bad_001": np.zeros((4, 4, 3), np.float32)}, {"bad_001": label})
    with pytest.raises(DataError, match=r"bad_001\.nii\.gz.*\[4\] outside the 2 declared classes"):
        list(read_msd_task(task))


def test_read_acdc_nifti(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    affine = np.diag([1.5625, 1.5625, 10.0, 1.0])
    for pid, frames in {"patient001": (1, 12), "patient002": (1, 9)}.items():
        folder = tmp_path / pid
        folder.mkdir()
        (folder / "Info.cfg").write_text(f"ED: {frames[0]}\nES: {frames[1]}\nGroup: DCM\nNbFrame: 30\n")
        nib.save(nib.Nifti1Image(np.zeros((7, 6, 3, 30), np.int16), affine), folder / f"{pid}_4d.nii.gz")
        for f in frames:
            img = rng.integers(0, 500, size=(7, 6, 3)).astype(np.int16)
            gt = rng.integers(0, 4, size=(7, 6, 3)).astype(np.uint8)
            nib.save(nib.Nifti1Image(img, affine), folder / f"{pid}_frame{f:02d}.nii.gz")
            nib.save(nib.Nifti1Image(gt, affine), folder / f"{pid}_frame{f:02d}_gt.nii.gz")

    cases = list(read_acdc_nifti(tmp_path))
    assert [(c.patient_id, c.group) for c in cases] == [
        ("patient001", "frame01"), ("patient001", "frame12"), ("patient002", "frame01"), ("patient002", "frame09")
    ]
    assert all(c.image.shape == (3, 1, 6, 7) and c.mask.shape == (3, 6, 7) for c in cases)
    assert cases[0].spacing == pytest.approx((10.0, 1.5625, 1.5625))
    assert cases[0].image.max() > 1  # raw intensities, not rescaled
    assert read_info_cfg(tmp_path / "patient001") == {"ED": "1", "ES": "12", "Group": "DCM", "NbFrame": "30"}


# --- synthetic paired folders -------------------------------------------------------------------


def _palette_png(path: Path, indices: np.ndarray) -> None:
    im = Image.fromarray(indices.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    im.save(path)


def test_paired_masks_folder_palette_regex_and_grayscale(tmp_path: Path) -> None:
    # the COVID-SemiSeg layout (Imgs/ and GT/ under the same names), read by the folder dataset
    (tmp_path / "Imgs").mkdir()
    (tmp_path / "GT").mkdir()
    rng = np.random.default_rng(2)
    truth = {}
    for stem in ("p1_10", "p1_2", "p1_1", "p2_5"):
        rgb = rng.integers(0, 256, size=(8, 9, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / "Imgs" / f"{stem}.png")
        truth[stem] = rng.integers(0, 3, size=(8, 9))
        _palette_png(tmp_path / "GT" / f"{stem}.png", truth[stem])

    opts = FolderOptions(subject=r"^(p\d+)_", stack=True, channels=1, class_names=["bg", "a", "b"])
    cases = list(folder_dataset(tmp_path, opts).cases())
    assert [c.patient_id for c in cases] == ["p1", "p2"]
    p1 = cases[0]
    assert p1.slice_index.tolist() == [1, 2, 10] and p1.image.shape == (3, 1, 8, 9)
    for k, stem in enumerate(("p1_1", "p1_2", "p1_10")):
        np.testing.assert_array_equal(p1.mask[k], truth[stem])  # palette indices, not colours
    gray = np.asarray(Image.open(tmp_path / "Imgs" / "p1_1.png").convert("L"), dtype=np.float32)
    np.testing.assert_allclose(p1.image[0, 0], gray, atol=1.0)  # same weights as PIL's "L"


def test_a_palette_image_gives_colours_and_a_palette_mask_gives_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    _palette_png(tmp_path / "scan.png", indices)  # palette: 0 black, 1 dark red, 2 dark green
    _palette_png(tmp_path / "scan_mask.png", indices)
    (case,) = list(folder_dataset(tmp_path, FolderOptions(class_names=["bg", "a", "b"])).cases())
    assert case.image.shape == (1, 3, 2, 2)  # an image to segment: its colours, as RGB
    np.testing.assert_array_equal(case.image[0, :, 0, 1], [128, 0, 0])
    np.testing.assert_array_equal(case.image[0, :, 1, 0], [0, 128, 0])
    np.testing.assert_array_equal(case.mask[0], indices)  # a mask: the class indices its palette stores


def test_paired_masks_beside_binary_and_mapping(tmp_path: Path) -> None:
    # the LGG layout (one folder per patient, "_mask" files beside the slices)
    folder = tmp_path / "patA"
    folder.mkdir()
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 2:4] = 255
    for k in (1, 2):
        tifffile.imwrite(folder / f"patA_{k}.tif", np.full((6, 6, 3), k, np.uint8))
        tifffile.imwrite(folder / f"patA_{k}_mask.tif", mask)

    (case,) = list(folder_dataset(tmp_path, FolderOptions(stack=True)).cases())
    assert case.patient_id == "patA" and case.image.shape == (2, 3, 6, 6)
    assert set(np.unique(case.mask).tolist()) == {0, 1} and case.mask.sum() == 2 * 4

    classes = ["bg", "a", "b", "c"]
    (mapped,) = list(folder_dataset(tmp_path, FolderOptions(stack=True, mask_values={0: 0, 255: 3},
                                                            class_names=classes)).cases())
    assert mapped.mask.max() == 3
    with pytest.raises(DataError, match=r"patA_1_mask\.tif: mask values \[255\] are not in data.folder.mask_values"):
        list(folder_dataset(tmp_path, FolderOptions(stack=True, mask_values={0: 0}, class_names=classes)).cases())


def test_paired_errors_name_the_file(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "a_1.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "a_1_mask.png")
    with pytest.raises(DataError, match=r"a_1_mask\.png: mask shape \(4, 5\) differs from image shape \(5, 5\)"):
        list(folder_dataset(tmp_path, FolderOptions(class_names=["bg", "fg"])).cases())
    with pytest.raises(DataError, match=r"a_1\.png: the path 'a_1' does not match data.folder.subject"):
        folder_dataset(tmp_path, FolderOptions(subject=r"^(case\d+)"))
    with pytest.raises(DataError, match="no such folder"):
        folder_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"LungInfection-Test: the official test part of COVID-SemiSeg is missing"):
        covid = tmp_path / "covid19-ct-semiseg" / "TrainingSet" / "LungInfection-Train" / "Doctor-label"
        for sub in ("Imgs", "GT"):
            (covid / sub).mkdir(parents=True)
        list(iter_cases("covid_ct", tmp_path))


# --- fetch_msd, offline: a tiny archive served on the loopback interface ------------------------


@pytest.fixture
def local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    served = tmp_path / "served"
    served.mkdir()
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    yield served, f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()
    server.server_close()


def _tiny_archive(served: Path, tmp_path: Path) -> str:
    """Write Task99_Tiny.tar (an MSD-style task) into ``served``; return its MD5."""
    task = tmp_path / "build" / "Task99_Tiny"
    _write_msd_task(task, {"tiny_001": np.ones((4, 4, 2), np.float32)}, {"tiny_001": np.zeros((4, 4, 2), np.uint8)})
    tar_path = served / "Task99_Tiny.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(task, arcname="Task99_Tiny")
    return hashlib.md5(tar_path.read_bytes()).hexdigest()


def test_fetch_msd_downloads_verifies_and_extracts(local_server, tmp_path: Path, monkeypatch) -> None:
    served, url, hits = local_server
    md5 = _tiny_archive(served, tmp_path)
    monkeypatch.setitem(download_module.MSD_ARCHIVES, "Task99_Tiny", (f"{url}/Task99_Tiny.tar", f"md5:{md5}"))

    task_dir = fetch_msd("tiny", dest=tmp_path / "data" / "msd", progress=True)
    assert task_dir == tmp_path / "data" / "msd" / "Task99_Tiny"
    (case,) = list(read_msd_task(task_dir))
    assert case.image.shape == (2, 1, 4, 4)
    assert (tmp_path / "cache" / "downloads" / "Task99_Tiny.tar").is_file()

    fetch_msd("Task99_Tiny", dest=tmp_path / "data" / "msd", progress=False)
    assert hits == ["/Task99_Tiny.tar"]  # the cached archive was verified, not downloaded again


def test_fetch_msd_checksum_mismatch_is_a_clear_error(local_server, tmp_path: Path, monkeypatch) -> None:
    served, url, _ = local_server
    _tiny_archive(served, tmp_path)
    monkeypatch.setitem(download_module.MSD_ARCHIVES, "Task99_Tiny", (f"{url}/Task99_Tiny.tar", "md5:" + "0" * 32))
    with pytest.raises(DataError, match=r"Task99_Tiny\.tar: download of Task99_Tiny failed verification") as err:
        fetch_msd("Task99_Tiny", dest=tmp_path / "out", progress=False)
    assert err.value.kind == "checksum"
    assert not (tmp_path / "out" / "Task99_Tiny").exists()
    assert not (tmp_path / "cache" / "downloads" / "Task99_Tiny.tar").exists()


def test_msd_task_names() -> None:
    assert msd_task_name("hippocampus") == msd_task_name("Task04") == "Task04_Hippocampus"
    url, known_hash = download_module.MSD_ARCHIVES["Task04_Hippocampus"]
    assert url.endswith("/Task04_Hippocampus.tar") and known_hash.startswith("md5:")
    assert len(download_module.MSD_ARCHIVES) == 10
    with pytest.raises(KeyError, match="unknown MSD task 'Task42'"):
        msd_task_name("Task42")
