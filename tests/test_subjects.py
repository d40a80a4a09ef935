"""MSD Hippocampus: volumes are not subjects. The fingerprint evidence behind chapter 3's wording."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medseg_tutorial.data.splits import Split
from medseg_tutorial.tools.subjects import fingerprints, likely_pairs, subject_report, twin_sides


def test_likely_pairs_finds_a_planted_twin_and_nothing_in_noise() -> None:
    rng = np.random.default_rng(0)
    prints = pd.DataFrame(np.exp(rng.normal(5, 2, size=(40, 5))), index=[f"v{i:02d}" for i in range(40)])
    assert likely_pairs(prints).empty  # independent volumes: no pair is 10x closer than usual
    prints.loc["twin"] = prints.loc["v07"] * (1 + 1e-3 * rng.normal(size=5))
    pairs = likely_pairs(prints)
    assert len(pairs) == 1 and {pairs.iloc[0]["a"], pairs.iloc[0]["b"]} == {"v07", "twin"}


def test_twin_sides() -> None:
    pairs = pd.DataFrame({"a": ["t1", "t2"], "b": ["r1", "t3"], "distance": [0.01, 0.02]})
    split = Split(train=["r1", "r2"], val=[], test=["t1", "t2", "t3", "t4"])
    assert twin_sides(split, pairs) == {"t1": "train", "t2": "test", "t3": "test", "t4": "none"}


def test_hippocampus_volumes_come_in_same_scan_pairs(shared_root: Path) -> None:
    report = subject_report("msd_hippocampus", shared_root)
    assert report["volumes"] == 260
    # many volumes have a partner whose intensity fingerprint is ~40x closer than a typical volume's
    assert report["likely_pairs"] >= 40
    assert report["median_pair_distance"] < 0.05 * report["typical_distance"]
    # ...and such partners often have consecutive file numbers: by chance about 0.5 of 66 pairs would
    assert report["pairs_with_consecutive_file_numbers"] >= 8
    assert report["intensity_max_range"][1] / report["intensity_max_range"][0] > 1000  # arbitrary units per scan


def test_fingerprints_have_one_row_per_volume(shared_root: Path) -> None:
    prints = fingerprints("msd_hippocampus", shared_root)
    assert prints.index.is_unique and len(prints) == 260
    assert (prints["p99"] <= prints["max"]).all()


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_ratio_must_be_positive_to_find_anything(bad: float) -> None:
    prints = pd.DataFrame({"x": [1.0, 1.0001, 5.0, 9.0]}, index=list("abcd"))
    assert likely_pairs(prints, ratio=bad).empty


def test_leak_effect_compares_test_volumes_whose_twin_was_trained_on(shared_root: Path, tmp_path: Path) -> None:
    from medseg_tutorial.data.splits import patient_split
    from medseg_tutorial.tools.subjects import leak_effect

    prints = fingerprints("msd_hippocampus", shared_root)
    split = patient_split(list(prints.index), (0.7, 0.1, 0.2), seed=0)
    sides = twin_sides(split, likely_pairs(prints))
    # a planted leak: volumes whose twin was trained on score 0.9, the others 0.8 (two classes, two runs)
    rows = [{"run_id": run, "patient_id": p, "class_name": c, "dice": 0.9 if sides[p] == "train" else 0.8}
            for run in ("r1", "r2") for p in split.test for c in ("anterior", "posterior")]
    pd.DataFrame(rows).to_csv(tmp_path / "patients.csv", index=False)
    out = leak_effect(tmp_path / "patients.csv", root=shared_root)
    assert out["test_volumes"] == 52 and out["twin_in_training"] + out["others"] == 52
    assert out["twin_in_training"] == sum(side == "train" for side in sides.values()) > 5
    assert out["difference"] == pytest.approx(0.1) and out["ci95"] == pytest.approx([0.1, 0.1])
