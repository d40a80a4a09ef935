"""Intensity normalisation, resizing, empty-slice selection, and the cached prepare step."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import medseg_tutorial.data  # noqa: F401  (registers the real-data importers)
from medseg_tutorial.data import prepare as prepare_mod
from medseg_tutorial.data.phantom import PHANTOM_INFO, make_phantom_case
from medseg_tutorial.data.prepare import prepare_dataset
from medseg_tutorial.data.preprocess import (
    CT_WINDOWS,
    FALLBACK_NORMALIZER,
    check_normalizer,
    ct_window,
    default_normalizer,
    list_normalizers,
    normalize_case,
    percentile_zscore,
    resize_slices,
    resolve_window,
    scale_8bit,
    select_slices,
)
from medseg_tutorial.data.registry import Dataset
from medseg_tutorial.data.types import Case, DatasetInfo

MRI = DatasetInfo("mri_test", "MRI", ("bg", "fg"), ("T1", "T2"), "", "", "")
CT8 = DatasetInfo("ct8_test", "CT", ("bg", "fg"), ("CT",), "", "", "")


# ---------------------------------------------------------------- intensities


def test_ct_window_maps_level_and_width_to_unit_range():
    hu = np.array([-1000, -160, 40, 240, 3000], np.float32).reshape(1, 1, 1, 5)
    np.testing.assert_allclose(ct_window(hu).ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)
    # a lung window keeps air-filled tissue that soft tissue windowing flattens to 0
    lung = ct_window(hu, window="lung").ravel()
    assert 0 < lung[0] < lung[1] < lung[2] < 1
    np.testing.assert_allclose(ct_window(hu, window=(0, 100)).ravel(), [0, 0, 0.9, 1, 1], atol=1e-6)


def test_resolve_window_presets_and_errors():
    assert resolve_window(None) == CT_WINDOWS["soft_tissue"] == (40.0, 400.0)
    assert resolve_window("bone") == CT_WINDOWS["bone"]
    with pytest.raises(ValueError, match="unknown CT window 'abdomen'"):
        resolve_window("abdomen")
    with pytest.raises(ValueError, match="width must be positive"):
        resolve_window((40, 0))


def test_scale_8bit():
    img = np.array([0, 51, 255], np.float32).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(scale_8bit(img).ravel(), [0, 0.2, 1])
    already = img / 255
    np.testing.assert_allclose(scale_8bit(already), already)  # not divided twice
    with pytest.raises(ValueError, match="8-bit image expected"):
        scale_8bit(img * 4)


def test_percentile_zscore_per_channel_with_outliers():
    rng = np.random.default_rng(0)
    img = np.stack([rng.normal(100, 10, (4, 32, 32)), rng.normal(2000, 300, (4, 32, 32))], axis=1)
    img[0, 0, 0, 0] = 1e6  # a hot voxel
    out = percentile_zscore(img.astype(np.float32))
    assert out.dtype == np.float32
    for c in range(2):  # each channel on its own scale
        assert abs(out[:, c].mean()) < 1e-4 and abs(out[:, c].std() - 1) < 1e-3
    assert out.max() < 4  # the outlier was clipped before the z-score
    with pytest.warns(RuntimeWarning, match="constant"):
        flat = percentile_zscore(np.ones((2, 1, 4, 4), np.float32))
    np.testing.assert_array_equal(flat, 0)  # constant channel: zeros, not NaN
    with pytest.raises(ValueError, match="percentiles"):
        percentile_zscore(img, low=99, high=1)


def test_normalize_case_picks_by_modality():
    assert {"ct_window", "scale_8bit", "percentile_zscore"} <= set(list_normalizers())
    assert default_normalizer(PHANTOM_INFO) == "ct_window"
    assert default_normalizer(CT8) == "scale_8bit"
    assert default_normalizer(MRI) == "percentile_zscore"
    case = make_phantom_case("p", 0)
    out = normalize_case(case, PHANTOM_INFO)
    assert out.image.min() == 0 and out.image.max() == 1 and out.patient_id == "p"
    assert out.mask is case.mask and case.image.min() == -1000  # the input is not modified
    narrow = normalize_case(case, PHANTOM_INFO, window="liver")
    assert (narrow.image == 1).mean() > (out.image == 1).mean()
    mri = Case("m", np.random.default_rng(0).random((3, 2, 8, 8), dtype=np.float32) * 500, None)
    with pytest.raises(ValueError, match="CT window applies only to CT"):
        normalize_case(mri, MRI, window=(40, 400))
    with pytest.raises(ValueError, match="unknown normaliser 'nope'"):
        normalize_case(mri, MRI, method="nope")
    # modality is free text: one without a rule of its own gets the range-free fallback
    us = DatasetInfo("x", "US", ("bg", "fg"), ("grey",), "", "", "")
    assert default_normalizer(us) == FALLBACK_NORMALIZER == "percentile_zscore"
    scaled = normalize_case(Case("u", np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4) * 7, None), us)
    assert abs(float(scaled.image.mean())) < 1e-6  # z-scored per channel


def test_minmax_none_and_the_normaliser_check():
    img = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4) * 100.0
    out = normalize_case(Case("c", img, None), MRI, method="minmax").image
    assert out[:, 0].min() == 0 and out[:, 0].max() == 1 and out[:, 1].min() == 0 and out[:, 1].max() == 1
    np.testing.assert_array_equal(normalize_case(Case("c", img, None), MRI, method="none").image, img)
    check_normalizer("percentile_zscore", {"low": 1, "high": 99})
    with pytest.raises(ValueError, match=r"unknown normaliser 'scale8bit'; did you mean 'scale_8bit'"):
        check_normalizer("scale8bit")
    with pytest.raises(ValueError, match=r"takes no option 'lo' \(its options: low, high\)"):
        check_normalizer("percentile_zscore", {"lo": 1})
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        check_normalizer("percentile_zscore", {"low": 99, "high": 1})
    with pytest.raises(ValueError, match="unknown CT window 'lungs'"):
        check_normalizer("ct_window", {"window": "lungs"})


# ---------------------------------------------------------------- resizing


def _labelled(h: int, w: int, labels=(0, 3, 7)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.random((2, 1, h, w), dtype=np.float32) + 1.0  # background > 0, so padding is visible
    mask = np.zeros((2, h, w), np.uint8)
    mask[:, h // 4 : h // 2, w // 4 : w // 2] = labels[1]
    mask[:, h // 2 : 3 * h // 4, w // 2 : 3 * w // 4] = labels[2]
    return image, mask


def test_letterbox_keeps_aspect_ratio_pads_and_updates_spacing():
    image, mask = _labelled(30, 60)
    out, m, spacing = resize_slices(image, mask, (64, 64), mode="letterbox", spacing=(2.0, 1.0))
    assert out.shape == (2, 1, 64, 64) and out.dtype == np.float32 and m.shape == (2, 64, 64)
    assert spacing == pytest.approx((2.0 * 30 / 32, 1.0 * 60 / 64))  # content is 32 x 64
    assert set(np.unique(m)) <= {0, 3, 7}  # nearest neighbour: no in-between labels
    rows = np.flatnonzero((out[0, 0] != out[0, 0].min()).any(axis=1))
    assert rows.min() == 16 and rows.max() == 47  # 32 content rows, centred
    np.testing.assert_array_equal(out[:, :, :16], out[:, :, 16:48].min())  # padded with the minimum
    assert (m[:, :16] == 0).all() and (m[:, 48:] == 0).all()
    # labelled areas keep their relative size (a quarter of a side each way)
    assert (m[0] == 3).sum() == pytest.approx(8 * 16, rel=0.15)


def test_resize_stretches_and_pad_only_pads_or_crops():
    image, mask = _labelled(30, 60)
    out, m, spacing = resize_slices(image, mask, (60, 30), mode="resize", spacing=(1.0, 1.0))
    assert out.shape[-2:] == (60, 30) and spacing == pytest.approx((0.5, 2.0))
    assert set(np.unique(m)) == {0, 3, 7}
    out, m, spacing = resize_slices(image, mask, (40, 40), mode="pad", spacing=(1.5, 1.5), fill=-5.0)
    assert spacing == (1.5, 1.5)  # no resampling, no spacing change
    assert (out[:, :, :5] == -5).all()  # 5 rows padded above
    np.testing.assert_array_equal(out[:, :, 5:35], image[..., 10:50])  # columns centre-cropped
    np.testing.assert_array_equal(m[:, 5:35], mask[:, :, 10:50])


def test_nearest_resize_is_aligned_with_image_resize():
    # 2x upsampling: each label pixel must become an exact 2 x 2 block (no half-pixel shift)
    mask = (np.indices((1, 8, 8)).sum(axis=0) % 2).astype(np.uint8)
    image = mask[:, None].astype(np.float32)
    _, m, _ = resize_slices(image, mask, (16, 16), mode="resize")
    np.testing.assert_array_equal(m[0], np.kron(mask[0], np.ones((2, 2), np.uint8)))


def test_resize_rejects_bad_input():
    image, mask = _labelled(16, 16)
    with pytest.raises(ValueError, match="unknown resize mode 'crop'"):
        resize_slices(image, mask, (8, 8), mode="crop")
    with pytest.raises(ValueError, match="mask shape"):
        resize_slices(image, mask[:, :8], (8, 8))
    with pytest.raises(ValueError, match=r"\(S, C, H, W\)"):
        resize_slices(image[0], mask, (8, 8))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        resize_slices(image, mask.astype(np.int32) * 100, (8, 8))


# ---------------------------------------------------------------- slice selection


def test_select_slices_keeps_all_foreground_and_a_fraction_of_empty():
    masks = np.zeros((20, 4, 4), np.uint8)
    masks[[2, 5, 11, 17], 1, 1] = 1
    idx, stats = select_slices(masks, keep_empty=0.25, seed=3)
    assert set([2, 5, 11, 17]) <= set(idx.tolist()) and np.all(np.diff(idx) > 0)
    assert stats == {"slices": 20, "foreground": 4, "empty": 16, "kept_empty": 4, "dropped": 12,
                     "kept": 8, "keep_empty": 0.25}
    again, _ = select_slices(masks, keep_empty=0.25, seed=3)
    np.testing.assert_array_equal(idx, again)
    other = {tuple(select_slices(masks, 0.25, seed=s)[0]) for s in range(10)}
    assert len(other) > 1  # the seed matters
    assert len(select_slices(masks, 0.0)[0]) == 4
    assert len(select_slices(masks, 1.0)[0]) == 20
    with pytest.raises(ValueError, match="keep_empty"):
        select_slices(masks, 1.5)


# ---------------------------------------------------------------- prepare + cache


def test_prepare_phantom_and_load_from_cache(tmp_path, monkeypatch):
    t = prepare_dataset("phantom", size=(64, 48), cache_dir=tmp_path, progress=False)
    assert t.images.shape == (96, 1, 64, 48) and t.images.dtype == np.float32
    assert t.masks.dtype == np.uint8 and t.spacing.shape == (96, 2)
    assert 0 <= t.images.min() and t.images.max() <= 1  # soft-tissue window
    assert t.patients == [f"phantom{k:03d}" for k in range(12)]
    assert t.info.name == "phantom"
    meta = t.meta
    assert meta["params"]["window"] == [40.0, 400.0] and meta["params"]["size"] == [64, 48]
    assert meta["counts"]["cases"] == 12 and meta["counts"]["kept"] == 96
    assert meta["package_version"] and meta["created"] and not meta["cache"]["loaded_from_cache"]
    files = list((tmp_path / "prepared").iterdir())
    assert [f.name for f in files] == [Path(meta["cache"]["path"]).name]  # no temp files left

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(Dataset, "cases", no_reading)
    cached = prepare_dataset("phantom", size=(64, 48), cache_dir=tmp_path, progress=False)
    assert cached.meta["cache"]["loaded_from_cache"]
    for name in ("images", "masks", "patient_ids", "slice_index", "spacing"):
        np.testing.assert_array_equal(getattr(cached, name), getattr(t, name))  # bit-identical
    assert cached.meta["counts"] == meta["counts"]


def test_parameters_change_the_cache_key(tmp_path):
    a = prepare_dataset("phantom", size=(32, 32), cache_dir=tmp_path, progress=False)
    b = prepare_dataset("phantom", size=(32, 32), keep_empty=0.0, cache_dir=tmp_path, progress=False)
    c = prepare_dataset("phantom", size=(32, 32), window="liver", cache_dir=tmp_path, progress=False)
    paths = {x.meta["cache"]["path"] for x in (a, b, c)}
    assert len(paths) == 3
    assert b.meta["counts"]["dropped"] == a.meta["counts"]["empty"] > 0
    assert b.masks.reshape(len(b), -1).any(axis=1).all()
    assert not np.array_equal(a.images, c.images)


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path):
    t = prepare_dataset("phantom", size=(32, 32), cache_dir=tmp_path, progress=False)
    path = Path(t.meta["cache"]["path"])
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:1000] + bytes(4000) + b[5000:]):
        path.write_bytes(damage(path.read_bytes()))
        with pytest.warns(RuntimeWarning, match="damaged"):
            again = prepare_dataset("phantom", size=(32, 32), cache_dir=tmp_path, progress=False)
        assert not again.meta["cache"]["loaded_from_cache"]
        np.testing.assert_array_equal(again.images, t.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepare_dataset("phantom", size=(32, 32), cache_dir=tmp_path, progress=False).meta["cache"][
            "loaded_from_cache"
        ]


def test_interrupted_write_leaves_no_cache(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("phantom", size=(32, 32), cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "prepared").iterdir()) == []


def test_prepare_rejects_bad_requests(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        prepare_dataset("nope", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not CT in Hounsfield units"):
        prepare_dataset("msd_hippocampus", window=(40, 400), cache_dir=tmp_path)
    def no_reading(*args, **kwargs):
        raise AssertionError("bad arguments must be caught before reading any case")

    monkeypatch.setattr(Dataset, "cases", no_reading)
    with pytest.raises(ValueError, match="keep_empty"):
        prepare_dataset("msd_hippocampus", keep_empty=2.0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown resize mode 'crop'"):
        prepare_dataset("msd_hippocampus", resize_mode="crop", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="size must be"):
        prepare_dataset("msd_hippocampus", size=(0, 64), cache_dir=tmp_path)


# ---------------------------------------------------------------- real data


def test_prepare_real_hippocampus_then_from_cache(shared_root, tmp_path, monkeypatch):
    start = time.perf_counter()
    t = prepare_dataset("msd_hippocampus", root=shared_root, size=(64, 64), cache_dir=tmp_path, progress=False)
    cold = time.perf_counter() - start
    assert len(t.patients) == 260 and all(re.fullmatch(r"hippocampus_\d{3}", p) for p in t.patients)
    assert t.images.shape[1:] == (1, 64, 64)
    assert set(np.unique(t.masks)) == {0, 1, 2}
    assert t.meta["counts"]["kept"] == len(t) == t.meta["counts"]["slices"]  # keep_empty=1.0
    # z-scored per volume: the hippocampus (grey matter) sits within a couple of SDs of the mean
    assert abs(float(t.images[np.broadcast_to(t.masks[:, None] > 0, t.images.shape)].mean())) < 2
    # 1 mm voxels, upsampled so the longest side fills 64 pixels
    assert (t.spacing < 1.0).all() and np.allclose(t.spacing[:, 0], t.spacing[:, 1], rtol=0.1)

    monkeypatch.setattr(Dataset, "cases", lambda *a, **k: pytest.fail("NIfTI read again"))
    start = time.perf_counter()
    cached = prepare_dataset("msd_hippocampus", root=shared_root, size=(64, 64), cache_dir=tmp_path, progress=False)
    warm = time.perf_counter() - start
    assert cached.meta["cache"]["loaded_from_cache"] and len(cached) == len(t)
    assert warm < cold


@pytest.mark.slow
def test_prepare_acdc_keeps_both_phases_under_one_patient(shared_root, tmp_path):
    t = prepare_dataset("acdc", root=shared_root, size=(32, 32), cache_dir=tmp_path, progress=False)
    assert len(t.patients) == 100 and all(re.fullmatch(r"patient\d{3}", p) for p in t.patients)
    assert t.meta["counts"]["cases"] == 200  # end-diastole and end-systole per patient
    assert set(np.unique(t.masks)) == {0, 1, 2, 3}
