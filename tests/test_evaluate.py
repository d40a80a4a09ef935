"""Evaluation tables, overlays and prediction on new images and NIfTI volumes (phantom checkpoint)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from medseg_tutorial.config import load_config
from medseg_tutorial.data.phantom import make_phantom_case
from medseg_tutorial.data.prepare import prepare_dataset
from medseg_tutorial.data.preprocess import resize_slices
from medseg_tutorial.data.registry import iter_cases
from medseg_tutorial.data.splits import load_split
from medseg_tutorial.evaluate import (
    Predictor,
    evaluate,
    predict_folder,
    predict_nifti,
    restore_size,
    save_overlays,
)
from medseg_tutorial.loaders import build_data
from medseg_tutorial.models import load_checkpoint, save_checkpoint
from medseg_tutorial.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """A briefly trained phantom model: (run_dir, RunResult)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared CI cores: one thread is faster
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config("phantom", ["preset=smoke", "train.epochs=2"])
    yield run_dir, train(cfg, run_dir, progress=False)
    torch.set_num_threads(before)


def test_evaluate_uses_the_stored_config_and_split(run) -> None:
    run_dir, _ = run
    scores = evaluate(run_dir / "best.pt", device="cpu")
    test_patients = load_split(run_dir / "split.json").test
    assert sorted(scores["patient_id"].unique()) == sorted(test_patients)
    assert list(scores.columns[:5]) == ["patient_id", "volume", "class", "class_name", "dice"]
    assert (scores.attrs["eval_slices"], scores.attrs["eval_grid"]) == ("all", "native")
    assert set(scores["class_name"]) == {"organ", "lesion"}  # foreground classes only
    assert len(scores) == 2 * len(test_patients)
    dice = scores["dice"].dropna()
    assert ((dice >= 0) & (dice <= 1)).all()
    summary = scores.attrs["summary"]
    assert list(summary["class"]) == [1, 2, "mean"]
    assert scores.attrs["mean_dice"] == pytest.approx(summary.iloc[-1]["dice_mean"], nan_ok=True)


def test_evaluate_on_val_reproduces_the_training_score(run) -> None:
    """best.pt scored on the prepared validation slices gives exactly the Dice the trainer logged."""
    run_dir, result = run
    scores = evaluate(run_dir / "best.pt", split="val", device="cpu", grid="prepared")
    assert scores.attrs["mean_dice"] == pytest.approx(result.best_score, abs=1e-12)


def test_evaluate_on_a_table_with_hd95(run) -> None:
    run_dir, _ = run
    table = prepare_dataset("phantom", size=(32, 32), progress=False)
    patients = table.patients[:3]
    scores = evaluate(run_dir / "best.pt", table, split=patients, device="cpu", slice_spacing=5.0, grid="prepared")
    assert sorted(scores["patient_id"].unique()) == sorted(patients)
    assert "hd95" in scores.columns and "hd95_mean" in scores.attrs["summary"].columns
    all_scores = evaluate(run_dir / "best.pt", table, split="all", device="cpu", grid="prepared")
    assert all_scores["patient_id"].nunique() == 12
    with pytest.raises(ValueError, match="split must be"):
        evaluate(run_dir / "best.pt", table, split="testing", device="cpu", grid="prepared")
    with pytest.raises(ValueError, match="reads the raw volumes"):
        evaluate(run_dir / "best.pt", table, device="cpu")


def test_evaluate_refuses_a_table_with_other_classes(run) -> None:
    run_dir, _ = run
    table = prepare_dataset("phantom", size=(32, 32), progress=False)
    other = table.subset(np.arange(len(table)))
    other.info = dataclasses.replace(table.info, class_names=("bg", "fg"))
    with pytest.raises(ValueError, match="the checkpoint has classes"):
        evaluate(run_dir / "best.pt", other, device="cpu", grid="prepared")


def _constant_checkpoint(run_dir: Path, out_dir: Path, label: int) -> Path:
    """best.pt of ``run_dir`` with a head that predicts ``label`` everywhere (and its split.json)."""
    model, meta = load_checkpoint(run_dir / "best.pt")
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[label] = 10.0
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "split.json", out_dir / "split.json")
    return save_checkpoint(out_dir / "best.pt", model, class_names=meta["class_names"],
                           normalization=meta["normalization"], provenance=meta["provenance"], extra=meta["extra"])


def test_native_evaluation_scores_every_slice_in_the_volumes_own_voxels(run, tmp_path: Path) -> None:
    """A model that says "organ" everywhere has TP + FP = every voxel of every test volume, exactly.

    This fails if empty slices are dropped (fewer voxels), or if scoring happens on the resized
    training grid (the smoke preset trains at 32 x 32; the phantom's volumes are larger)."""
    run_dir, _ = run
    cfg = load_config(run_dir / "config.yaml")
    checkpoint = _constant_checkpoint(run_dir, tmp_path / "organ", label=1)
    scores = evaluate(checkpoint, device="cpu")
    test = set(load_split(run_dir / "split.json").test)
    native = {c.patient_id: c for c in iter_cases("phantom") if c.patient_id in test}
    organ = scores[scores["class_name"] == "organ"].set_index("patient_id")
    assert set(organ.index) == test
    for patient, case in native.items():
        assert organ.loc[patient, "tp"] + organ.loc[patient, "fp"] == case.mask.size
        assert organ.loc[patient, "slices"] == len(case.image)
        assert organ.loc[patient, "fn"] == 0 and organ.loc[patient, "tp"] == (case.mask == 1).sum()
    assert case.image.shape[-1] != cfg.data.size[1]  # the test would not see a resized grid otherwise
    lesion = scores[scores["class_name"] == "lesion"]
    assert (lesion["tp"] == 0).all() and lesion["hd95"].isin([np.inf]).all()  # lesion never predicted


def test_keep_empty_thins_the_training_slices_only() -> None:
    cfg = load_config("phantom", ["preset=smoke", "data.keep_empty=0.0"])
    data = build_data(cfg)
    empty = ~data.table.masks.reshape(len(data.table), -1).any(axis=1)
    assert empty.any(), "the phantom must have empty slices for this test"
    assert not empty[data.train_rows].any()  # training: no empty slice kept
    val_patients = set(data.split.val)
    all_val = np.flatnonzero(np.isin(data.table.patient_ids, list(val_patients)))
    assert np.array_equal(np.sort(data.val_rows), all_val) and empty[data.val_rows].any()


def test_save_overlays_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 1, 32, 32)).astype(np.float32)
    masks = np.zeros((10, 32, 32), np.uint8)
    masks[2:5, 8:20, 8:20] = 1
    masks[3, 10:14, 10:14] = 2
    preds = np.roll(masks, 2, axis=2)
    path = save_overlays(images, masks, preds, tmp_path / "figs" / "overlay.png", n=4,
                         class_names=["background", "organ", "lesion"], title="phantom")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.height > img.width  # 4 rows of 3 panels
    with pytest.raises(ValueError, match="shapes differ"):
        save_overlays(images, masks[:5], preds, tmp_path / "bad.png")


def test_restore_size_undoes_letterbox_and_pad() -> None:
    labels = np.zeros((2, 32, 16), np.uint8)
    labels[:, 4:20, 3:9] = 1
    labels[1, 10:12, 5:7] = 2
    image = labels[:, None].astype(np.float32)
    for mode in ("letterbox", "pad", "resize"):
        _, resized, _ = resize_slices(image, labels, (64, 64), mode=mode)
        back = restore_size(resized, (32, 16), (64, 64), mode)
        assert back.shape == labels.shape and back.dtype == np.uint8
        if mode != "resize":  # integer scale factors: nearest-neighbour round trips exactly
            np.testing.assert_array_equal(back, labels)
        assert set(np.unique(back)) <= {0, 1, 2}


def _phantom_nifti(path: Path, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    case = make_phantom_case("p", seed=7, n_slices=5, size=size)
    affine = np.array([[-1.5, 0, 0, 90.0], [0, 1.5, 0, -20.0], [0, 0, 5.0, 12.0], [0, 0, 0, 1]])
    volume = case.image[:, 0].transpose(2, 1, 0)  # (S, H, W) -> NIfTI (x, y, z)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), path)
    return case.image, affine


def test_predict_nifti_keeps_grid_and_affine(run, tmp_path: Path) -> None:
    run_dir, _ = run
    image, affine = _phantom_nifti(tmp_path / "ct.nii.gz", size=48)  # not the training size (32)
    out = predict_nifti(run_dir / "best.pt", tmp_path / "ct.nii.gz", tmp_path / "out" / "seg.nii.gz", device="cpu")
    seg = nib.load(out)
    assert seg.shape == (48, 48, 5) and seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, affine)
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    # the same as predicting the volume's slices directly: orientation is handled consistently
    direct = Predictor.load(run_dir / "best.pt", "cpu")(image.astype(np.int16).astype(np.float32))
    np.testing.assert_array_equal(labels, direct.transpose(2, 1, 0))


def test_predict_folder_png_jpg_tiff(run, tmp_path: Path) -> None:
    run_dir, _ = run
    folder = tmp_path / "images"
    folder.mkdir()
    gray = np.linspace(0, 255, 40 * 56).reshape(40, 56).astype(np.uint8)
    Image.fromarray(gray).save(folder / "a.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(folder / "b.jpg")  # RGB for a 1-channel model
    tifffile.imwrite(folder / "c.tif", gray[:32, :32])
    Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 99)], -1), mode="RGBA").save(folder / "d.png")
    Image.fromarray(gray).save(folder / "a_mask.png")  # a mask beside its image: skipped
    (folder / "notes.txt").write_text("not an image")
    written = predict_folder(run_dir / "best.pt", folder, tmp_path / "out", device="cpu")
    assert [p.name for p in written] == ["a.png", "b.png", "c.png", "d.png"]
    sizes = [Image.open(p).size for p in written]
    assert sizes == [(56, 40), (56, 40), (32, 32), (56, 40)]  # (width, height) of each input
    # grey RGBA: its luma is the grey image (alpha ignored), so its labels are those of a.png
    np.testing.assert_array_equal(np.asarray(Image.open(written[3])), np.asarray(Image.open(written[0])))
    for p in written:
        assert set(np.unique(np.asarray(Image.open(p)))) <= {0, 1, 2}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.png"):
        predict_folder(run_dir / "best.pt", tmp_path / "empty", tmp_path / "x")
