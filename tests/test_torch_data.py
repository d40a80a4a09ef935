"""The torch Dataset, joint augmentation of image and mask, and reproducible loaders."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from medseg_tutorial.data import torch_data
from medseg_tutorial.data.phantom import PHANTOM_INFO
from medseg_tutorial.data.prepare import prepare_dataset
from medseg_tutorial.data.torch_data import (
    ScaleShiftIntensity,
    SegmentationDataset,
    default_num_workers,
    eval_transform,
    make_loader,
    train_transform,
)
from medseg_tutorial.data.types import SliceTable


@pytest.fixture(scope="module")
def phantom_table(tmp_path_factory) -> SliceTable:
    return prepare_dataset("phantom", size=(64, 64), cache_dir=tmp_path_factory.mktemp("c"), progress=False)


@pytest.fixture
def square_table() -> SliceTable:
    """Dark images with one bright off-centre square, labelled 2, and a dim bar labelled 1."""
    n = 8
    images = np.zeros((n, 1, 48, 48), np.float32)
    masks = np.zeros((n, 48, 48), np.uint8)
    for i in range(n):
        y, x = 6 + i, 8 + 2 * i  # a different place in every slice, away from the centre
        images[i, 0, y : y + 10, x : x + 10] = 1.0
        masks[i, y : y + 10, x : x + 10] = 2
        images[i, 0, 40:44, 5:40] = 0.4
        masks[i, 40:44, 5:40] = 1
    return SliceTable(images, masks, np.array([f"p{i % 3}" for i in range(n)]), np.arange(n),
                      np.ones((n, 2), np.float32), PHANTOM_INFO)


def test_item_shapes_and_dtypes(phantom_table):
    for transform in (None, eval_transform(), train_transform((64, 64), seed=0)):
        item = SegmentationDataset(phantom_table, transform=transform)[10]
        assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.int64
        assert item["patient_id"] == phantom_table.patient_ids[10]
        assert item["slice_index"] == int(phantom_table.slice_index[10])


def test_eval_transform_changes_nothing(phantom_table):
    ds = SegmentationDataset(phantom_table, indices=[3, 50], transform=eval_transform())
    assert len(ds) == 2
    item = ds[1]
    np.testing.assert_array_equal(item["image"].numpy(), phantom_table.images[50])
    np.testing.assert_array_equal(item["mask"].numpy(), phantom_table.masks[50])


def test_flip_moves_image_and_mask_together(square_table):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    item = SegmentationDataset(square_table, transform=flip)[2]
    np.testing.assert_array_equal(item["image"].numpy(), square_table.images[2][..., ::-1])
    np.testing.assert_array_equal(item["mask"].numpy(), square_table.masks[2][:, ::-1])


@pytest.mark.parametrize("strength", ["light", "medium"])
def test_augmented_mask_stays_on_the_bright_square(square_table, strength):
    ds = SegmentationDataset(square_table, transform=train_transform((48, 48), strength, seed=1))
    moved = 0
    for _ in range(6):
        for i in range(len(ds)):
            item = ds[i]
            image, mask = item["image"][0].numpy(), item["mask"].numpy()
            assert set(np.unique(mask)) <= {0, 1, 2}  # labels stay labels, never interpolated
            square = mask == 2
            if square.sum() < 20:  # pushed (mostly) out of view by the affine
                continue
            bright = image > (image[square].mean() + image[~square & (mask == 0)].mean()) / 2
            iou = (bright & square).sum() / (bright | square).sum()
            assert iou > 0.8, f"image and mask drifted apart (IoU {iou:.2f})"
            moved += not np.array_equal(mask, square_table.masks[i])
    assert moved > 10  # the augmentation did move things


def test_labels_subset_on_real_phantom_with_medium_augmentation(phantom_table):
    ds = SegmentationDataset(phantom_table, transform=train_transform((64, 64), "medium", seed=0))
    labels = set()
    for i in range(0, len(ds), 3):
        labels |= set(np.unique(ds[i]["mask"].numpy()).tolist())
    assert labels <= {0, 1, 2} and 2 in labels


def test_train_transform_crops_or_pads_to_size(phantom_table):
    ds = SegmentationDataset(phantom_table, transform=train_transform((40, 80), seed=0))
    item = ds[0]
    assert item["image"].shape == (1, 40, 80) and item["mask"].shape == (40, 80)
    with pytest.raises(ValueError, match="unknown augmentation strength 'heavy'"):
        train_transform((64, 64), "heavy")


def test_intensity_change_does_not_clip_zscores():
    # albumentations' RandomBrightnessContrast clips float images to [0, 1]: fatal for z-scored MRI
    z = np.linspace(-3, 3, 64, dtype=np.float32).reshape(8, 8, 1)
    clipped = A.Compose([A.RandomBrightnessContrast(p=1.0)], seed=0)(image=z)["image"]
    assert clipped.min() >= 0
    ours = A.Compose([ScaleShiftIntensity(0.2, 0.2, p=1.0)], seed=0)(image=z)["image"]
    assert ours.min() < -2 and ours.max() > 2
    assert np.corrcoef(ours.ravel(), z.ravel())[0, 1] > 0.999  # an affine intensity change
    with pytest.raises(ValueError, match="must be >= 0"):
        ScaleShiftIntensity(-1.0)


def _epoch(loader) -> tuple[torch.Tensor, list[str]]:
    images, ids = [], []
    for batch in loader:
        images.append(batch["image"])
        ids += batch["patient_id"]
    return torch.cat(images), ids


def test_loader_is_deterministic_for_a_seed(phantom_table):
    def run(seed: int, workers: int = 0):
        ds = SegmentationDataset(phantom_table, transform=train_transform((64, 64), seed=None))
        return _epoch(make_loader(ds, batch_size=16, shuffle=True, seed=seed, num_workers=workers))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c[0]) and a[1] != c[1]
    assert sorted(a[1]) == sorted(phantom_table.patient_ids.tolist())  # one epoch sees every slice once


def test_workers_are_reseeded_and_reproducible(phantom_table):
    table = phantom_table.subset(np.arange(8))
    same = table.subset(np.zeros(8, int))  # eight copies of one slice
    ds = SegmentationDataset(same, transform=train_transform((64, 64), "medium", seed=0))
    first = _epoch(make_loader(ds, batch_size=4, shuffle=False, num_workers=2, seed=5))[0]
    second = _epoch(make_loader(ds, batch_size=4, shuffle=False, num_workers=2, seed=5))[0]
    assert torch.equal(first, second)
    # worker 0 made batch 0 and worker 1 batch 1: reseeded workers augment differently
    assert not torch.equal(first[:4], first[4:])


def test_loader_options_and_batches(phantom_table, monkeypatch):
    monkeypatch.setattr(torch_data, "_available_cpus", lambda: 2)
    assert default_num_workers() == 0
    monkeypatch.setattr(torch_data, "_available_cpus", lambda: 16)
    assert default_num_workers() == 4
    ds = SegmentationDataset(phantom_table, indices=np.arange(10))
    loader = make_loader(ds, batch_size=4, shuffle=False, drop_last=True, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 1, 64, 64)
    assert batches[0]["mask"].dtype == torch.int64 and batches[0]["slice_index"].shape == (4,)
    assert loader.pin_memory == torch.cuda.is_available()
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, batch_size=0, shuffle=False)


def test_out_of_range_indices_raise(phantom_table):
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 96\)"):
        SegmentationDataset(phantom_table, indices=[0, 96])
