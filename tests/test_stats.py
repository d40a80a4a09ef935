"""Known answers for medseg_tutorial.stats: bootstrap CIs, paired tests, Holm, and the sentences."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from medseg_tutorial.stats import (
    Comparison,
    hierarchical_bootstrap,
    holm,
    multiplicity_note,
    paired_bootstrap,
    paired_test,
)


def _long_table(n_seeds: int, n_patients: int, seed_sd: float, patient_sd: float, noise_sd: float,
                shift: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """Per-patient Dice of arms A and B; seed_sd / patient_sd are the spread of the A - B effect."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.9, n_patients)  # shared by both arms: pairing removes it
    seed_fx = rng.normal(0, seed_sd, n_seeds)
    patient_fx = rng.normal(0, patient_sd, n_patients)
    rows = []
    for s in range(n_seeds):
        for p in range(n_patients):
            b = base[p] + rng.normal(0, 0.01)
            a = b + shift + seed_fx[s] + patient_fx[p] + rng.normal(0, noise_sd)
            rows += [{"arm": "A", "seed": s, "patient_id": f"p{p:02d}", "dice": a},
                     {"arm": "B", "seed": s, "patient_id": f"p{p:02d}", "dice": b}]
    return pd.DataFrame(rows)


# --- paired bootstrap -------------------------------------------------------------------------

def test_constant_shift_gives_exact_difference_and_zero_width_ci() -> None:
    a = np.random.default_rng(1).uniform(0.5, 0.9, 25)
    res = paired_bootstrap(a, a - 0.1, n_boot=500)
    assert res.difference == pytest.approx(0.1, abs=1e-12)
    assert res.low <= 0.1 + 1e-12 and res.high >= 0.1 - 1e-12
    assert res.high - res.low < 1e-12
    assert res.direction == 1
    assert res.n_units == 25 and res.n_groups is None and res.dropped == 0
    assert res.p_value == pytest.approx(2 / 501)


def test_identical_arms_decide_nothing() -> None:
    a = np.random.default_rng(2).uniform(0.5, 0.9, 25)
    res = paired_bootstrap(a, a.copy(), n_boot=500)
    assert res.difference == 0 and res.low == 0 and res.high == 0
    assert res.direction == 0
    assert res.p_value == 1.0


def test_swapping_arms_flips_the_sign() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.8, 0.05, 30), rng.normal(0.7, 0.05, 30)
    ab, ba = paired_bootstrap(a, b, n_boot=1000), paired_bootstrap(b, a, n_boot=1000)
    assert ab.direction == 1 and ba.direction == -1
    assert ba.difference == pytest.approx(-ab.difference)


def test_large_sample_ci_matches_normal_theory() -> None:
    n = 4000
    d = np.random.default_rng(4).normal(0.05, 0.1, n)
    res = paired_bootstrap(d, np.zeros(n), n_boot=2000)
    assert res.low < 0.05 < res.high
    expected = 2 * 1.96 * 0.1 / math.sqrt(n)
    assert (res.high - res.low) == pytest.approx(expected, rel=0.15)


def test_ci_covers_a_zero_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(5)
    covered = 0
    for i in range(200):
        a = rng.normal(0.8, 0.05, 30)
        b = a + rng.normal(0.0, 0.03, 30)  # true difference 0
        res = paired_bootstrap(a, b, n_boot=500, seed=i)
        covered += res.low <= 0 <= res.high
    assert 0.90 <= covered / 200 <= 0.99


def test_median_statistic_and_missing_pairs() -> None:
    a = np.array([0.8, 0.7, np.nan, 0.9, 0.6, 0.75])
    b = np.array([0.7, 0.7, 0.5, 0.6, np.nan, 0.70])
    res = paired_bootstrap(a, b, n_boot=200, statistic=np.median)
    assert res.n_units == 4 and res.dropped == 2
    assert res.difference == pytest.approx(np.median([0.1, 0.0, 0.3, 0.05]))
    assert "median" in res.method
    assert "2 unpaired or missing values left out" in res.sentence("A", "B")
    assert "only 4 patients" in res.note


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="paired by position"):
        paired_bootstrap([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 2"):
        paired_bootstrap([0.1], [0.2])
    with pytest.raises(ValueError, match="ci must be"):
        paired_bootstrap([0.1, 0.2], [0.1, 0.3], ci=95)


def test_same_seed_same_answer() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.8, 0.05, 20), rng.normal(0.79, 0.05, 20)
    assert paired_bootstrap(a, b, n_boot=300, seed=7) == paired_bootstrap(a, b, n_boot=300, seed=7)


# --- hierarchical bootstrap -------------------------------------------------------------------

def test_hierarchical_constant_shift() -> None:
    df = _long_table(3, 20, seed_sd=0.0, patient_sd=0.0, noise_sd=0.0, shift=0.1)
    res = hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=500)
    assert res.difference == pytest.approx(0.1)
    assert res.low == pytest.approx(0.1) and res.high == pytest.approx(0.1)
    assert res.direction == 1
    assert (res.n_units, res.n_groups, res.n_pairs, res.dropped) == (20, 3, 60, 0)
    assert "crossed" in res.method


def test_large_seed_effects_widen_the_ci_beyond_the_flat_bootstrap() -> None:
    df = _long_table(5, 30, seed_sd=0.05, patient_sd=0.005, noise_sd=0.01)
    wide = df.pivot_table(index=["seed", "patient_id"], columns="arm", values="dice")
    flat = paired_bootstrap(wide["A"], wide["B"], n_boot=2000)
    for design in ("nested", "crossed"):
        hier = hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=2000, design=design)
        assert hier.difference == pytest.approx(flat.difference)
        assert hier.high - hier.low > 3 * (flat.high - flat.low), design


def test_shared_patients_make_the_crossed_ci_wider_than_the_nested_one() -> None:
    # the benefit varies by patient and every seed sees the same patients: nested resampling
    # would treat 5 seeds x 30 patients as 150 independent patients
    df = _long_table(5, 30, seed_sd=0.0, patient_sd=0.05, noise_sd=0.005)
    nested = hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=2000, design="nested")
    crossed = hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=2000, design="crossed")
    assert crossed.high - crossed.low > 1.5 * (nested.high - nested.low)
    assert "crossed" in hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=100).method


def test_nested_design_is_chosen_when_each_seed_has_its_own_patients() -> None:
    df = _long_table(4, 12, seed_sd=0.01, patient_sd=0.01, noise_sd=0.01)
    df["patient_id"] = df["seed"].astype(str) + "-" + df["patient_id"]
    res = hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=500)
    assert "nested" in res.method
    assert res.n_units == 48 and res.n_groups == 4
    assert "paired over 48 (seed, patient) pairs from 48 patients and 4 seeds" in res.sentence("A", "B")
    assert "only 4 seeds" in res.note


def test_unequal_coverage_uses_only_common_pairs() -> None:
    df = _long_table(3, 10, seed_sd=0.01, patient_sd=0.01, noise_sd=0.01)
    # B lost seed 2 entirely, A lost one patient of seed 0, and one B value is missing
    df = df[~((df["arm"] == "B") & (df["seed"] == 2))]
    df = df[~((df["arm"] == "A") & (df["seed"] == 0) & (df["patient_id"] == "p03"))]
    df.loc[(df["arm"] == "B") & (df["seed"] == 1) & (df["patient_id"] == "p05"), "dice"] = np.nan
    res = hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=300)
    assert res.n_pairs == 18 and res.n_groups == 2 and res.n_units == 10
    # A: 29 rows, B: 20 rows, 18 pairs kept -> 29 + 20 - 36 = 13 left out
    assert res.dropped == 13
    wide = df.pivot_table(index=["seed", "patient_id"], columns="arm", values="dice").dropna()
    assert res.difference == pytest.approx((wide["A"] - wide["B"]).mean())
    assert "13 unpaired or missing values left out" in res.sentence("A", "B")


def test_no_common_pairs_is_a_clear_error() -> None:
    df = _long_table(2, 5, 0.01, 0.01, 0.01)
    df.loc[df["arm"] == "B", "seed"] += 10
    with pytest.raises(ValueError, match=r"no common \(seed, patient_id\) pairs"):
        hierarchical_bootstrap(df, "dice", "arm", "A", "B", n_boot=100)


def test_hierarchical_input_errors() -> None:
    df = _long_table(2, 5, 0.01, 0.01, 0.01)
    with pytest.raises(ValueError, match="no rows with arm == 'C'"):
        hierarchical_bootstrap(df, "dice", "arm", "A", "C")
    with pytest.raises(ValueError, match="columns"):
        hierarchical_bootstrap(df, "test_dice", "arm", "A", "B")
    with pytest.raises(ValueError, match="several rows per"):
        hierarchical_bootstrap(pd.concat([df, df]), "dice", "arm", "A", "B")


# --- paired tests -----------------------------------------------------------------------------

def test_sign_test_known_answers() -> None:
    three = paired_test([0.9, 0.8, 0.7], [0.8, 0.6, 0.4])
    assert three.sign_p == 0.25 and three.n_positive == 3
    assert three.wilcoxon_p == pytest.approx(0.25)
    assert "p < 0.05" in three.note
    ten = paired_test(np.arange(1, 11) / 100 + 0.5, np.full(10, 0.5))
    assert ten.sign_p == pytest.approx(2 / 1024, abs=1e-15)
    assert ten.wilcoxon_p == pytest.approx(2 / 1024)
    assert ten.note == ""


def test_paired_test_zeros_and_all_equal() -> None:
    res = paired_test([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.4], [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.4])
    assert (res.n, res.n_positive, res.n_negative, res.n_zero) == (7, 6, 0, 1)
    assert res.sign_p == pytest.approx(2 / 64)
    assert "1 zero difference left out" in res.note
    same = paired_test([0.5, 0.6], [0.5, 0.6])
    assert same.sign_p == 1.0 and same.wilcoxon_p == 1.0


# --- multiplicity -----------------------------------------------------------------------------

def test_holm_hand_computed_example() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_is_capped_and_monotone() -> None:
    p = np.array([0.5, 0.001, 0.3, 0.2, 0.04])
    adj = holm(p)
    assert adj.max() <= 1.0 and (adj >= p).all()
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all()
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_multiplicity_note() -> None:
    note = multiplicity_note(6)
    assert note.startswith("This table makes 6 comparisons; with Holm's correction")
    assert "0.0083" in note and "family-wise alpha 0.05" in note
    assert "0.025" in multiplicity_note(2)
    assert multiplicity_note(1) == "This table makes 1 comparison, so no correction is needed: its p must be below 0.05."
    with pytest.raises(ValueError):
        multiplicity_note(0)


# --- the sentences ----------------------------------------------------------------------------

def _comparison(diff: float, low: float, high: float, **kw: object) -> Comparison:
    return Comparison(diff, low, high, 0.95, 0.01, 20, 3, "hierarchical bootstrap", **kw)


def test_sentence_when_a_wins() -> None:
    assert _comparison(0.012, 0.004, 0.020).sentence("A", "B") == (
        "A scores 0.012 higher Dice than B (95% CI 0.004 to 0.020, paired over 20 patients x 3 seeds).")


def test_sentence_when_a_loses() -> None:
    c = _comparison(-0.012, -0.020, -0.004)
    assert c.direction == -1
    assert c.sentence("imagenet", "scratch") == (
        "imagenet scores 0.012 lower Dice than scratch (95% CI 0.004 to 0.020 lower, "
        "paired over 20 patients x 3 seeds).")


def test_sentence_when_the_ci_contains_zero() -> None:
    c = _comparison(0.003, -0.005, 0.011, dropped=1)
    assert c.direction == 0
    assert c.sentence("A", "B", metric="HD95", digits=2) == (
        "The data do not decide between A and B: difference 0.00 (95% CI -0.01 to 0.01, "
        "paired over 20 patients x 3 seeds; 1 unpaired or missing value left out).")
    assert c.sentence("A", "B") == (
        "The data do not decide between A and B: difference 0.003 (95% CI -0.005 to 0.011, "
        "paired over 20 patients x 3 seeds; 1 unpaired or missing value left out).")


def test_flat_sentence_and_frozen() -> None:
    c = Comparison(0.02, 0.01, 0.03, 0.9, None, 12, None, "paired bootstrap")
    assert c.sentence("A", "B").endswith("(90% CI 0.010 to 0.030, paired over 12 patients).")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.difference = 0.0  # type: ignore[misc]
