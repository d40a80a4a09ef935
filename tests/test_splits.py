"""Patient-level splits never share a patient; the slice-level split demonstrably leaks."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from medseg_tutorial.data.prepare import prepare_dataset
from medseg_tutorial.data.splits import (
    Split,
    label_fraction,
    leakage_report,
    load_split,
    patient_split,
    save_split,
    slice_split,
)


@pytest.fixture(scope="module")
def hippocampus_ids(shared_root) -> list[str]:
    """The real MSD Hippocampus subject ids, as the importer names them (file name without .nii.gz)."""
    task = shared_root / "msd" / "Task04_Hippocampus"
    training = json.loads((task / "dataset.json").read_text())["training"]
    ids = [re.sub(r"\.nii(\.gz)?$", "", entry["image"].split("/")[-1]) for entry in training]
    assert len(ids) == 260
    return ids


@pytest.fixture(scope="module")
def phantom_table(tmp_path_factory):
    return prepare_dataset("phantom", size=(32, 32), cache_dir=tmp_path_factory.mktemp("c"), progress=False)


def _assert_partition(split: Split, ids) -> None:
    subsets = [set(split.train), set(split.val), set(split.test)]
    assert sum(len(s) for s in subsets) == len(set(ids))  # nobody twice
    assert set().union(*subsets) == set(ids)  # nobody lost
    for s in subsets:
        assert s, "every subset with a non-zero fraction has a patient"


def test_real_hippocampus_split_is_a_partition_with_the_stated_fractions(hippocampus_ids):
    split = patient_split(hippocampus_ids, seed=0)
    _assert_partition(split, hippocampus_ids)
    assert split.counts() == {"train": 182, "val": 39, "test": 39}
    # one entry per slice (as in a table) gives the same split as unique ids in any order
    repeated = [p for p in hippocampus_ids for _ in range(3)][::-1]
    assert patient_split(repeated, seed=0) == split


@pytest.mark.parametrize("n", [3, 4, 7, 40, 260])
def test_no_patient_in_two_subsets_over_many_seeds(n):
    ids = [f"p{i:03d}" for i in range(n)]
    seen_tests = set()
    for seed in range(200):
        split = patient_split(ids, seed=seed)
        _assert_partition(split, ids)
        seen_tests.add(tuple(split.test))
    assert len(seen_tests) > 1  # different seeds give different splits


def test_deterministic_and_seed_sensitive(hippocampus_ids):
    a, b = patient_split(hippocampus_ids, seed=3), patient_split(hippocampus_ids, seed=3)
    assert a == b
    assert patient_split(hippocampus_ids, seed=4).test != a.test


def test_two_subsets_and_bad_fractions():
    ids = [f"p{i}" for i in range(10)]
    split = patient_split(ids, fractions=(0.8, 0.0, 0.2))
    assert split.val == [] and len(split.test) == 2 and len(split.train) == 8
    with pytest.raises(ValueError, match="summing to 1"):
        patient_split(ids, fractions=(0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="cannot fill 3 non-empty subsets"):
        patient_split(["a", "b"])


def test_stratified_split_spreads_each_group(hippocampus_ids):
    groups = {p: ("left", "right", "both", "none")[i % 4] for i, p in enumerate(sorted(hippocampus_ids))}
    split = patient_split(hippocampus_ids, seed=1, stratify=groups)
    _assert_partition(split, hippocampus_ids)
    assert split.stratified
    for subset in (split.train, split.val, split.test):
        counts = np.bincount([("left", "right", "both", "none").index(groups[p]) for p in subset])
        assert counts.max() - counts.min() <= 2  # each group in proportion (65 patients each)
    with pytest.raises(ValueError, match="no group for patients"):
        patient_split(hippocampus_ids, stratify={})


def test_label_fraction_is_nested_and_inside_train(hippocampus_ids):
    train = patient_split(hippocampus_ids, seed=0).train
    subsets = {f: label_fraction(train, f, seed=7) for f in (0.05, 0.1, 0.25, 0.5, 1.0)}
    assert subsets[1.0] == sorted(train)
    assert len(subsets[0.1]) == round(0.1 * len(train))
    fractions = sorted(subsets)
    for small, large in itertools.pairwise(fractions):
        assert set(subsets[small]) < set(subsets[large])
    assert label_fraction(train, 0.1, seed=8) != subsets[0.1]
    assert len(label_fraction(["a", "b"], 0.01)) == 1  # never empty
    with pytest.raises(ValueError, match="fraction must be in"):
        label_fraction(train, 0.0)


def test_slice_split_leaks_and_patient_split_does_not(phantom_table):
    bad = slice_split(phantom_table, seed=0)
    assert sum(len(v) for v in bad.values()) == len(phantom_table)
    report = leakage_report(phantom_table, bad)
    assert report["leaking_patients"] > 0
    assert report["shared_patients"]["train&test"] > 0
    assert report["test_slices_from_leaking_patients"] > 0.5  # most test slices have a sibling in train

    good = patient_split(phantom_table, seed=0)
    assert good.dataset == "phantom"
    report = leakage_report(phantom_table, good)
    assert report["leaking_patients"] == 0 and set(report["shared_patients"].values()) == {0}
    assert report["test_slices_from_leaking_patients"] == 0.0
    rows = good.indices(phantom_table)
    assert sum(len(r) for r in rows.values()) == len(phantom_table)
    assert report["slices"] == {k: len(v) for k, v in rows.items()}


def test_save_and_load_round_trip(tmp_path, hippocampus_ids):
    split = patient_split(hippocampus_ids, seed=2)
    path = save_split(split, tmp_path / "splits" / "hippo.json", dataset="msd_hippocampus")
    manifest = json.loads(path.read_text())
    assert manifest["dataset"] == "msd_hippocampus" and manifest["seed"] == 2
    assert manifest["counts"] == split.counts() and manifest["fractions"] == [0.7, 0.15, 0.15]
    loaded = load_split(path)
    assert (loaded.train, loaded.val, loaded.test) == (split.train, split.val, split.test)
    assert loaded.dataset == "msd_hippocampus"


def test_load_rejects_broken_manifests(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON split manifest"):
        load_split(path)
    path.write_text(json.dumps({"train": ["a"], "val": ["b"], "seed": 0, "fractions": [0.5, 0.5, 0]}))
    with pytest.raises(ValueError, match=r"lacks \['test'\]"):
        load_split(path)
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": [], "seed": 0, "fractions": [1, 0, 0]}))
    with pytest.raises(ValueError, match="patients in both train and val"):
        load_split(path)
    path.write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["c"], "seed": 0,
                                "fractions": [0.4, 0.3, 0.3], "counts": {"train": 5, "val": 1, "test": 1}}))
    with pytest.raises(ValueError, match="counts"):
        load_split(path)
