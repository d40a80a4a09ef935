"""The nearest-neighbour memoriser and the leakage experiment (chapter 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_tutorial.data.types import DatasetInfo, SliceTable
from medseg_tutorial.leakage import (
    leakage_experiment,
    memorise,
    memoriser_scores,
    slice_features,
    split_rows,
    summarize_leakage,
)

INFO = DatasetInfo("toy", "MRI", ("background", "fg"), ("T1",), "none", "none", "")


def _toy_table(n_patients: int = 6, n_slices: int = 5, size: int = 16) -> SliceTable:
    """Each patient has its own random texture and a square whose position drifts along the slices."""
    rng = np.random.default_rng(0)
    images, masks, ids, index = [], [], [], []
    for p in range(n_patients):
        base = rng.normal(size=(size, size)).astype(np.float32)
        for s in range(n_slices):
            m = np.zeros((size, size), np.uint8)
            m[4 + p % 3 : 9 + p % 3, 3 + s : 8 + s] = 1
            images.append((base + 2.0 * m)[None])
            masks.append(m)
            ids.append(f"p{p}")
            index.append(s)
    n = len(images)
    return SliceTable(
        np.stack(images), np.stack(masks), np.array(ids), np.array(index), np.ones((n, 2), np.float32), INFO
    )


def test_features_are_correlations() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 2, 8, 8)).astype(np.float32)
    f = slice_features(x, size=8)
    assert torch.allclose(f.norm(dim=1), torch.ones(4), atol=1e-5)
    a, b = x[0].ravel(), x[1].ravel()
    assert float(f[0] @ f[1]) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-5)
    # a brightness/contrast change does not change the correlation
    assert torch.allclose(slice_features(3 * x + 5, size=8), f, atol=1e-5)
    assert torch.all(slice_features(np.zeros((1, 1, 8, 8), np.float32)) == 0)
    with pytest.raises(ValueError):
        slice_features(x[0])


def test_memoriser_copies_the_most_similar_training_mask() -> None:
    table = _toy_table()
    train, test = np.arange(0, 30, 2), np.arange(1, 30, 2)
    pred = memorise(table, train, test, size=16)
    assert pred.masks.shape == (len(test), 16, 16)
    assert np.array_equal(pred.masks, table.masks[pred.neighbours])
    assert set(pred.neighbours.tolist()) <= set(train.tolist())
    # each patient has its own texture, so the nearest slice is always from the same patient
    assert pred.same_patient(table) == 1.0
    # precomputed features of the whole table give the same neighbours
    features = slice_features(table.images, size=16)
    assert np.array_equal(memorise(table, train, test, features=features).neighbours, pred.neighbours)
    with pytest.raises(ValueError):
        memorise(table, train, test, features=features[:5])
    # a test slice that is also a training slice finds itself
    self_pred = memorise(table, train, train[:3])
    assert np.array_equal(self_pred.neighbours, train[:3])
    with pytest.raises(ValueError):
        memorise(table, [], test)


def test_memoriser_scores_per_patient() -> None:
    table = _toy_table()
    scores, pred = memoriser_scores(table, np.arange(0, 30, 2), np.arange(1, 30, 2))
    assert list(scores.columns) == ["patient_id", "dice", "slices"]
    assert len(scores) == 6 and scores["slices"].sum() == 15
    assert scores["dice"].between(0, 1).all()
    assert len(pred.test_rows) == 15


def test_split_rows_kinds() -> None:
    table = _toy_table()
    patient = split_rows(table, "patient", seed=0)
    assert not set(table.patient_ids[patient["train"]]) & set(table.patient_ids[patient["test"]])
    leaky = split_rows(table, "slice", seed=0)
    assert sum(len(v) for v in leaky.values()) == len(table)
    with pytest.raises(ValueError):
        split_rows(table, "volume")


def test_leakage_experiment_on_toy_data() -> None:
    table = _toy_table(n_patients=10)
    df = leakage_experiment(table, seeds=(0, 1))
    assert len(df) == 4 and set(df["split"]) == {"slice", "patient"}
    patient = df[df["split"] == "patient"]
    assert (patient["shared_patients"] == 0).all() and (patient["neighbour_same_patient"] == 0).all()
    summary = summarize_leakage(df)
    assert list(summary["split"]) == ["slice", "patient"] and (summary["seeds"] == 2).all()


@pytest.fixture(scope="module")
def hippocampus(shared_root) -> SliceTable:
    from medseg_tutorial.data.prepare import prepare_dataset

    return prepare_dataset("msd_hippocampus", root=shared_root, size=(64, 64), progress=False)


def test_slice_split_leaks_on_real_hippocampus(hippocampus: SliceTable) -> None:
    """On real MSD Hippocampus data the leaky slice split scores higher than the patient split, every seed."""
    df = leakage_experiment(hippocampus, seeds=(0, 1))
    for seed in (0, 1):
        by_kind = df[df["seed"] == seed].set_index("split")
        assert by_kind.loc["slice", "dice"] > by_kind.loc["patient", "dice"] + 0.02
        assert by_kind.loc["patient", "shared_patients"] == 0
        assert by_kind.loc["patient", "test_slices_from_train_patients"] == 0
        assert by_kind.loc["slice", "shared_patients"] > 0
        # the leak's mechanism: the copied mask comes from the test slice's own patient
        assert by_kind.loc["slice", "neighbour_same_patient"] > 0.5
        assert by_kind.loc["patient", "neighbour_same_patient"] == 0
