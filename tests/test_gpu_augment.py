"""Augmentation on the training device (``data.gpu_augment``), tested on CPU tensors.

The device pipeline must be *distributionally* equivalent to the albumentations pipeline of
``train_transform`` (the random numbers differ, so single images cannot be compared). Both augment
one fixed, asymmetric test slice ``N = 2000`` times; from every output we measure

* whether it is flipped left-right / up-down (the labelled bar's centroid changes side),
* the bar's area in pixels (the product of the x and y scale factors, and what leaves the view),
* the bar's orientation in degrees (second moments: rotation, flips and anisotropic scaling),
* the image mean and standard deviation (brightness/contrast, and what the zero fill adds),
* whether the geometry was left alone (the mask equals a flip of the input: ``1 - p_affine``).

Tolerances: flip and "no affine" fractions may differ by at most 0.05 (the standard error of a
difference of two fractions near 0.5 at N = 2000 is 0.016, so 0.05 is over 3 standard errors); the
continuous statistics pass a two-sample Kolmogorov-Smirnov test at alpha = 0.001 each. Means and
standard deviations are rounded to 1e-4 and angles to 0.01 degree first: un-warped outputs form
atoms (about 15 % of samples are the input with a flip only) whose float32 sums differ in the last
bit between the pipelines, which KS would otherwise count as a different distribution. The seeds are
fixed, so the test is deterministic; the p-values measured with four seeds were all above 0.02. A
negative control checks the test has power: the "medium" rotation range (±20°) against the
CPU "light" pipeline (±10°) is rejected.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from albumentations.augmentations.geometric import functional as fgeometric
from scipy.stats import ks_2samp

from medseg_tutorial import train as trainer_module
from medseg_tutorial.config import ConfigError, load_config
from medseg_tutorial.data.phantom import PHANTOM_INFO
from medseg_tutorial.data.torch_data import train_transform
from medseg_tutorial.data.types import SliceTable
from medseg_tutorial.distributed import DistInfo
from medseg_tutorial.loaders import build_data
from medseg_tutorial.tools.gpu_augment import DeviceAugment, DeviceBatchIterator, affine_theta
from medseg_tutorial.train import NonFiniteLossError, train

S = 64  # test slices are S x S
N = 2000  # samples per pipeline in the distribution tests
ALPHA = 0.001  # per KS test
FRACTION_TOL = 0.05  # flip and no-affine fractions
CONTINUOUS = ("area", "angle", "mean", "std")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


# --- helpers (tests/test_gpu.py reuses them on CUDA) -----------------------------------------------


def asymmetric_slice() -> tuple[np.ndarray, np.ndarray]:
    """A (1, S, S) image with an intensity gradient and a bright horizontal bar (label 1) in the top left."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    image = -0.5 + 0.02 * xx + 0.01 * yy
    mask = np.zeros((S, S), np.uint8)
    mask[11:17, 6:26] = 1
    image[mask == 1] = 2.0
    return image[None], mask


def augmentation_statistics(images: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample statistics of augmented copies of :func:`asymmetric_slice` (images (N, S, S))."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    fg = masks == 1
    area = fg.sum((1, 2)).astype(np.float64)
    a = np.maximum(area, 1)
    cx, cy = (fg * xx).sum((1, 2)) / a, (fg * yy).sum((1, 2)) / a
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    angle = np.degrees(0.5 * np.arctan2(2 * (fg * dx * dy).sum((1, 2)), (fg * (dx**2 - dy**2)).sum((1, 2))))
    _, mask0 = asymmetric_slice()
    flips = np.stack([mask0, mask0[:, ::-1], mask0[::-1], mask0[::-1, ::-1]])
    unwarped = (masks[:, None] == flips[None]).all(axis=(2, 3)).any(axis=1)
    return {"hflip": cx > S / 2 - 0.5, "vflip": cy > S / 2 - 0.5, "no_affine": unwarped,
            "area": area, "angle": angle.round(2), "mean": images.mean((1, 2)).round(4),
            "std": images.std((1, 2)).round(4)}


def cpu_samples(strength: str, n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """Statistics of ``n`` outputs of the albumentations pipeline."""
    image, mask = asymmetric_slice()
    transform = train_transform((S, S), strength, seed=seed)
    outs = [transform(image=image.transpose(1, 2, 0), mask=mask) for _ in range(n)]
    return augmentation_statistics(np.stack([o["image"][..., 0] for o in outs]), np.stack([o["mask"] for o in outs]))


def device_samples(augment: DeviceAugment, device: str | torch.device = "cpu", n: int = N,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Statistics of ``n`` outputs of ``augment`` run on ``device``."""
    image, mask = asymmetric_slice()
    images = torch.from_numpy(image).to(device)[None].repeat(n, 1, 1, 1)
    masks = torch.from_numpy(mask).to(device)[None].repeat(n, 1, 1)
    out_images, out_masks = augment(images, masks, torch.Generator(device=device).manual_seed(seed))
    assert out_images.device == images.device and out_masks.dtype == torch.uint8
    return augmentation_statistics(out_images[:, 0].cpu().numpy(), out_masks.cpu().numpy())


def compare(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction differences and KS p-values of two sets of statistics."""
    out = {k: abs(float(reference[k].mean()) - float(other[k].mean())) for k in ("hflip", "vflip", "no_affine")}
    out.update({f"ks_{k}": float(ks_2samp(reference[k], other[k]).pvalue) for k in CONTINUOUS})
    return out


def assert_equivalent(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:
    result = compare(reference, other)
    summary = ", ".join(f"{k}={v:.3g}" for k, v in result.items())
    for k in ("hflip", "vflip", "no_affine"):
        assert result[k] <= FRACTION_TOL, f"{k} fractions differ by {result[k]:.3f} ({summary})"
    for k in CONTINUOUS:
        assert result[f"ks_{k}"] > ALPHA, f"{k}: KS rejects equal distributions ({summary})"
        ref, oth = reference[k], other[k]
        # and, more readable than a p-value: means within a tenth of a standard deviation
        assert abs(ref.mean() - oth.mean()) <= 0.1 * ref.std() + 1e-6, (k, ref.mean(), oth.mean())
        assert oth.std() == pytest.approx(ref.std(), rel=0.1, abs=1e-6), (k, ref.std(), oth.std())


@pytest.fixture(scope="module")
def cpu_reference() -> dict[str, dict[str, np.ndarray]]:
    return {strength: cpu_samples(strength) for strength in ("light", "medium")}


def square_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark slices with a bright off-centre square (label 2) and a dim bar (label 1), 48 x 48."""
    images = torch.zeros(n, 1, 48, 48)
    masks = torch.zeros(n, 48, 48, dtype=torch.uint8)
    for i in range(n):
        y, x = 6 + i, 8 + 2 * i
        images[i, 0, y : y + 10, x : x + 10] = 1.0
        masks[i, y : y + 10, x : x + 10] = 2
        images[i, 0, 40:44, 5:40] = 0.4
        masks[i, 40:44, 5:40] = 1
    return images, masks


def _table(n: int = 10, size: int = 32) -> SliceTable:
    rng = np.random.default_rng(0)
    return SliceTable(rng.normal(size=(n, 1, size, size)).astype(np.float32),
                      rng.integers(0, 3, size=(n, size, size)).astype(np.uint8),
                      np.array([f"p{i // 3}" for i in range(n)]), np.arange(100, 100 + n),
                      np.ones((n, 2), np.float32), PHANTOM_INFO)


# --- the transform ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rotate", "sx", "sy", "tx", "ty"), [(15, 1.1, 0.9, 0, 0), (-20, 0.85, 1.2, 3, -2)])
def test_affine_is_albumentations_matrix(rotate, sx, sy, tx, ty):
    """For the same parameters, grid_sample with our theta == albumentations' OpenCV warp."""
    h, w = 40, 56  # not square: the pixel aspect must be handled
    yy, xx = np.mgrid[0:h, 0:w]
    image = (np.sin(xx / 5) + np.cos(yy / 7) + 0.02 * xx).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 10:30], mask[25:35, 30:50] = 1, 2
    matrix = fgeometric.create_affine_transformation_matrix(
        {"x": tx, "y": ty}, {"x": 0.0, "y": 0.0}, {"x": sx, "y": sy}, rotate, fgeometric.center((h, w)))
    ref_image = fgeometric.warp_affine(image, matrix, cv2.INTER_LINEAR, 0, cv2.BORDER_CONSTANT, (h, w))
    ref_mask = fgeometric.warp_affine(mask, matrix, cv2.INTER_NEAREST, 0, cv2.BORDER_CONSTANT, (h, w))

    aug = DeviceAugment((h, w), p_hflip=0, p_intensity=0)
    params = aug.sample_params(1)
    params.update(affine=torch.tensor([True]), rotate=torch.tensor([float(rotate)]), scale_x=torch.tensor([sx]),
                  scale_y=torch.tensor([sy]), translate_x=torch.tensor([float(tx)]),
                  translate_y=torch.tensor([float(ty)]))
    out_image, out_mask = aug.apply(torch.from_numpy(image)[None, None], torch.from_numpy(mask)[None], params)
    np.testing.assert_allclose(out_image[0, 0].numpy(), ref_image, atol=1e-4)
    assert (out_mask[0].numpy() == ref_mask).mean() > 0.995  # nearest-neighbour ties may round differently
    theta = affine_theta(*(torch.tensor([v], dtype=torch.float64) for v in (0.0, 1.0, 1.0, 0.0, 0.0)), (h, w))
    torch.testing.assert_close(theta, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=torch.float64))


@pytest.mark.parametrize("strength", ["light", "medium"])
def test_labels_stay_labels(strength):
    masks = torch.from_numpy(np.random.default_rng(0).choice([0, 1, 2, 5], size=(64, 32, 32)).astype(np.uint8))
    images = torch.randn(64, 2, 32, 32)
    out_images, out_masks = DeviceAugment((32, 32), strength)(images, masks, torch.Generator().manual_seed(0))
    assert out_images.shape == images.shape and out_images.dtype == torch.float32
    assert out_masks.shape == masks.shape and out_masks.dtype == torch.uint8
    assert set(out_masks.unique().tolist()) <= {0, 1, 2, 5}
    long_masks = DeviceAugment((32, 32), strength)(images, masks.long(), torch.Generator().manual_seed(0))[1]
    assert long_masks.dtype == torch.int64 and torch.equal(long_masks, out_masks.long())


@pytest.mark.parametrize("strength", ["light", "medium"])
def test_image_and_mask_stay_aligned(strength):
    """The bright square and its label move together through flips, rotations and scaling."""
    images, masks = square_batch()
    aug = DeviceAugment((48, 48), strength)
    generator = torch.Generator().manual_seed(1)
    moved = 0
    for _ in range(6):
        out_images, out_masks = aug(images, masks, generator)
        for image, mask, original in zip(out_images[:, 0], out_masks, masks):
            square = mask == 2
            if square.sum() < 20:  # pushed (mostly) out of view
                continue
            bright = image > (image[square].mean() + image[~square & (mask == 0)].mean()) / 2
            iou = (bright & square).sum() / (bright | square).sum()
            assert iou > 0.8, f"image and mask drifted apart (IoU {iou:.2f})"
            corr = np.corrcoef(image.flatten().numpy(), square.flatten().float().numpy())[0, 1]
            assert corr > 0.8
            moved += not torch.equal(mask, original)
    assert moved > 10


def test_identity_when_every_probability_is_zero():
    images, masks = square_batch()
    images = images + torch.randn_like(images)  # z-score-like, negative values included
    aug = DeviceAugment((48, 48), "medium", p_hflip=0, p_vflip=0, p_affine=0, p_intensity=0)
    out_images, out_masks = aug(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out_images, images) and torch.equal(out_masks, masks)


def test_intensity_is_scale_shift_without_clipping():
    z = torch.linspace(-3, 3, 64).reshape(1, 1, 8, 8).repeat(16, 1, 1, 1)
    aug = DeviceAugment((8, 8), "medium", p_hflip=0, p_vflip=0, p_affine=0, p_intensity=1.0)
    out, _ = aug(z, torch.zeros(16, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert out.min() < -2.4 and out.max() > 2.4  # no clipping to [0, 1]
    for sample in out:  # affine in intensity: contrast about the mean within +-20 %, shift within +-0.2
        slope, intercept = np.polyfit(z[0].flatten().numpy(), sample.flatten().numpy(), 1)
        assert 0.8 - 1e-5 <= slope <= 1.2 + 1e-5 and abs(intercept) <= 0.2 + 1e-5
    assert len({round(float(s.mean()), 5) for s in out}) == 16  # a different shift per sample


def test_optional_gamma_keeps_range_and_order():
    x = torch.linspace(-2, 3, 100).reshape(1, 1, 10, 10).repeat(4, 1, 1, 1)
    aug = DeviceAugment((10, 10), p_hflip=0, p_affine=0, p_intensity=0, gamma=(0.5, 0.6), p_gamma=1.0)
    out, _ = aug(x, torch.zeros(4, 10, 10, dtype=torch.uint8), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.amin(dim=(1, 2, 3)), x.amin(dim=(1, 2, 3)))
    torch.testing.assert_close(out.amax(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)))
    assert (out.flatten(1).diff() > 0).all() and (out > x + 1e-3).flatten(1).any(1).all()  # gamma < 1 brightens
    assert DeviceAugment((10, 10)).gamma is None  # off by default, like the CPU pipeline


def test_presets_mirror_train_transform_and_arguments_are_checked():
    light, medium = DeviceAugment((32, 32), "light"), DeviceAugment((32, 32), "medium")
    assert (light.p_vflip, light.max_rotate_deg, light.scale_range, light.translate) == (0.0, 10.0, (0.9, 1.1), 0.0)
    assert (medium.p_vflip, medium.max_rotate_deg, medium.scale_range, medium.translate) == (0.5, 20.0, (0.85, 1.2), 0.06)
    assert (light.p_hflip, light.p_affine, light.p_intensity, light.intensity_scale) == (0.5, 0.7, 0.5, 0.1)
    assert "strength='light'" in repr(light)
    with pytest.raises(ValueError, match="unknown augmentation strength 'heavy'"):
        DeviceAugment((32, 32), "heavy")
    with pytest.raises(ValueError, match="p_affine must be in"):
        DeviceAugment((32, 32), p_affine=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        DeviceAugment((32, 32), scale_range=(1.2, 0.9))
    with pytest.raises(ValueError, match=r"built for \(32, 32\)"):
        light(torch.zeros(2, 1, 16, 16), torch.zeros(2, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected images"):
        light(torch.zeros(2, 1, 32, 32), torch.zeros(3, 32, 32, dtype=torch.uint8))
    empty = light(torch.zeros(0, 1, 32, 32), torch.zeros(0, 32, 32, dtype=torch.uint8))
    assert empty[0].shape == (0, 1, 32, 32)


# --- distributional equivalence with the albumentations pipeline ------------------------------------


@pytest.mark.parametrize("strength", ["light", "medium"])
def test_distributions_match_the_cpu_pipeline(cpu_reference, strength):
    ref = cpu_reference[strength]
    ours = device_samples(DeviceAugment((S, S), strength))
    assert_equivalent(ref, ours)
    # sanity of the statistics themselves
    assert abs(ref["hflip"].mean() - 0.5) < FRACTION_TOL and abs(ref["no_affine"].mean() - 0.3) < FRACTION_TOL
    expected_vflip = 0.0 if strength == "light" else 0.5
    assert abs(ref["vflip"].mean() - expected_vflip) < FRACTION_TOL


def test_the_equivalence_test_has_power(cpu_reference):
    """A device pipeline with the wrong rotation or scale range is told apart from the CPU one."""
    ref, n = cpu_reference["light"], N // 2  # half as many device samples: the differences are large
    wrong_rotation = compare(ref, device_samples(DeviceAugment((S, S), "light", max_rotate_deg=20), n=n))
    assert wrong_rotation["ks_angle"] < ALPHA
    wrong_scale = compare(ref, device_samples(DeviceAugment((S, S), "light", scale_range=(0.8, 1.2)), n=n))
    assert wrong_scale["ks_area"] < ALPHA
    no_intensity = compare(ref, device_samples(DeviceAugment((S, S), "light", p_intensity=0), n=n))
    assert no_intensity["ks_mean"] < ALPHA


# --- the batch iterator -----------------------------------------------------------------------------


def test_iterator_covers_every_row_once_and_matches_the_table():
    table = _table(10)
    rows = np.array([9, 0, 3, 4, 7, 8, 1])
    it = DeviceBatchIterator(table, rows, batch_size=3, shuffle=True, seed=0)
    assert len(it) == 3 and it.nbytes == 7 * 32 * 32 * 5
    for epoch in (0, 1):
        it.set_epoch(epoch)
        batches = list(it)
        assert [len(b["patient_id"]) for b in batches] == [3, 3, 1]
        seen = torch.cat([b["slice_index"] for b in batches]).numpy() - 100
        assert sorted(seen.tolist()) == sorted(rows.tolist())  # every row exactly once
        for b in batches:
            assert b["image"].dtype == torch.float32 and b["mask"].dtype == torch.int64
            assert b["slice_index"].dtype == torch.int64 and isinstance(b["patient_id"][0], str)
            for image, mask, pid, index in zip(b["image"], b["mask"], b["patient_id"], b["slice_index"]):
                row = int(index) - 100  # no augmentation: the stored row comes back unchanged
                assert torch.equal(image, torch.from_numpy(table.images[row]))
                assert torch.equal(mask, torch.from_numpy(table.masks[row]).long())
                assert pid == table.patient_ids[row]
    dropping = DeviceBatchIterator(table, rows, batch_size=3, drop_last=True)
    assert len(dropping) == 2 and [len(b["patient_id"]) for b in dropping] == [3, 3]
    ordered = DeviceBatchIterator(table, rows, batch_size=4, shuffle=False)
    assert torch.cat([b["slice_index"] for b in ordered]).tolist() == (rows + 100).tolist()
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 10\)"):
        DeviceBatchIterator(table, [0, 10])
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatchIterator(table, batch_size=0)


def test_iterator_is_a_function_of_seed_and_epoch():
    table = _table(12)
    aug = DeviceAugment((32, 32), "medium")

    def epoch(seed: int, e: int, it: DeviceBatchIterator | None = None) -> torch.Tensor:
        it = it or DeviceBatchIterator(table, batch_size=4, seed=seed, augment=aug)
        it.set_epoch(e)
        return torch.cat([torch.cat([b["image"].flatten(1), b["mask"].flatten(1).float()], 1) for b in it])

    it = DeviceBatchIterator(table, batch_size=4, seed=0, augment=aug)
    a = epoch(0, 1, it)
    assert torch.equal(a, epoch(0, 1))  # a new iterator, same (seed, epoch)
    assert torch.equal(a, epoch(0, 1, it))  # the same epoch iterated again
    epoch(0, 2, it)
    assert torch.equal(a, epoch(0, 1, it))  # going back to an epoch repeats it
    assert not torch.equal(a, epoch(0, 2)) and not torch.equal(a, epoch(1, 1))


def test_data_parallel_shares_partition_the_rows():
    table = _table(10)
    shares = [DeviceBatchIterator(table, batch_size=2, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    seen = [torch.cat([b["slice_index"] for b in s]).tolist() for s in shares]
    assert len(seen[0]) == len(seen[1]) == 5 and sorted(seen[0] + seen[1]) == list(range(100, 110))
    assert shares[0].epoch_seed() != shares[1].epoch_seed()  # each rank augments differently


# --- trainer integration ----------------------------------------------------------------------------


def _cfg(*overrides: str):
    return load_config("phantom", ["preset=smoke", *overrides])


def test_config_option():
    assert _cfg().data.augment_on == "cpu"
    assert _cfg("data.augment_on=device").data.augment_on == "device"
    with pytest.raises(ConfigError, match=r"data\.augment_on: must be one of 'cpu', 'device'"):
        _cfg("data.augment_on=gpu")


def test_device_batches_come_in_the_cpu_loaders_order():
    """Same seed and epoch: the device iterator visits the training slices exactly as the DataLoader."""
    cpu = build_data(_cfg("data.augment=none"), DistInfo())
    dev = build_data(_cfg("data.augment=none", "data.augment_on=device"), DistInfo())
    assert isinstance(dev.loader, DeviceBatchIterator) and dev.loader.augment is None
    assert len(dev.loader) == len(cpu.loader)
    for epoch in (0, 1):
        cpu.start_epoch(epoch)
        dev.start_epoch(epoch)
        for a, b in zip(cpu.loader, dev.loader, strict=True):
            assert a["patient_id"] == b["patient_id"] and torch.equal(a["slice_index"], b["slice_index"])
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    augmented = build_data(_cfg("data.augment=medium", "data.augment_on=device"), DistInfo())
    assert augmented.loader.augment.strength == "medium" and augmented.loader.device == torch.device("cpu")


def test_training_with_device_augmentation_is_finite_and_reproducible(tmp_path: Path):
    cfg = _cfg("train.epochs=2", "train.max_steps_per_epoch=2", "data.augment=medium", "data.augment_on=device",
               "train.deterministic=true")
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert np.isfinite(a.history["train_loss"]).all() and np.isfinite(a.history["val_dice"]).all()
    pd.testing.assert_frame_equal(a.history.drop(columns="time"), b.history.drop(columns="time"))
    wa = torch.load(a.last_checkpoint, weights_only=True)["model"]
    wb = torch.load(b.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_mid_epoch_with_device_augmentation_is_exact(tmp_path: Path, monkeypatch):
    """A crash in epoch 1 (after a mid-epoch checkpoint), then resume == the uninterrupted run."""
    cfg = _cfg("train.epochs=2", "train.max_steps_per_epoch=2", "data.augment=light", "data.augment_on=device",
               "train.deterministic=true", "train.checkpoint_every=1")
    reference = train(cfg, tmp_path / "ref", progress=False)

    real_build_loss, calls = trainer_module.build_loss, {"n": 0}

    def crashing_loss(*args, **kwargs):
        inner = real_build_loss(*args, **kwargs)

        def loss(logits, target):
            calls["n"] += 1
            return inner(logits, target) * (float("nan") if calls["n"] == 4 else 1.0)  # epoch 1, batch 1

        return loss

    monkeypatch.setattr(trainer_module, "build_loss", lambda *a, **kw: _ToModule(crashing_loss(*a, **kw)))
    with pytest.raises(NonFiniteLossError, match="epoch 1, batch 1"):
        train(cfg, tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state"]["batch"] == 1
    monkeypatch.setattr(trainer_module, "build_loss", real_build_loss)
    resumed = train(cfg, tmp_path / "run", resume=True, progress=False)
    pd.testing.assert_frame_equal(resumed.history.drop(columns="time"), reference.history.drop(columns="time"))
    wa = torch.load(reference.last_checkpoint, weights_only=True)["model"]
    wb = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class _ToModule(torch.nn.Module):
    """A loss function as a module (the trainer calls ``.to(device)`` on it)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, target)
