"""Uncertainty for "A versus B": paired bootstrap CIs, paired tests and multiplicity.

Every comparison of two arms (conditions) in the book is *paired*: arm A and arm B are scored on
the same test patients, and runs with the same seed share a split and an initialisation. Pairing
removes the patient-to-patient spread that both arms share, which is most of the spread in Dice.

* :func:`paired_bootstrap` - one vector of per-unit values per arm (e.g. per-patient Dice).
* :func:`hierarchical_bootstrap` - a long table with several seeds per arm and several patients
  per seed; seeds are resampled as well, because a second training run is a second draw too.
* :func:`paired_test` - Wilcoxon signed-rank and exact sign test, with a note when n is too small
  for either to reach p < 0.05.
* :func:`holm` and :func:`multiplicity_note` - many comparisons in one table.

The result of a bootstrap is a :class:`Comparison`; its :meth:`Comparison.sentence` writes the
careful sentence, and :attr:`Comparison.direction` is what hidden check cells assert.

>>> rng = np.random.default_rng(0)
>>> a = rng.normal(0.80, 0.05, 40)
>>> paired_bootstrap(a, a - 0.02, n_boot=1000).direction
1

This module is a leaf: it imports only numpy, scipy and pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as _st

# the functions; Comparison (what they return) and multiplicity_note (results' sentences) by module path
__all__ = ["hierarchical_bootstrap", "holm", "paired_bootstrap", "paired_test"]

# at most this many resampled values in memory at once (32 MiB of float64)
_CHUNK = 1 << 22
# below these counts a percentile bootstrap CI is known to be too narrow, so the result says so
_FEW_UNITS = 10
_FEW_GROUPS = 5


def _plural(label: str, count: int) -> str:
    return label if count == 1 else f"{label}s"


@dataclass(frozen=True)
class Comparison:
    """A paired difference ``A - B`` with its percentile bootstrap CI.

    ``n_units`` counts distinct units (patients), ``n_groups`` distinct groups (seeds; ``None`` for
    a flat bootstrap), ``n_pairs`` the paired values used and ``dropped`` the values left out
    (missing, or without a partner in the other arm). ``note`` warns when the CI is likely too
    narrow (few units or seeds).
    """

    difference: float
    low: float
    high: float
    ci: float
    p_value: float | None
    n_units: int
    n_groups: int | None
    method: str
    dropped: int = 0
    n_pairs: int | None = None
    unit_label: str = "patient"
    group_label: str = "seed"
    note: str = ""

    @property
    def direction(self) -> int:
        """+1 when the whole CI lies above 0 (A better), -1 when below (B better), 0 otherwise."""
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0

    def _basis(self) -> str:
        units = f"{self.n_units} {_plural(self.unit_label, self.n_units)}"
        if self.n_groups is None:
            basis = f"paired over {units}"
        else:
            groups = f"{self.n_groups} {_plural(self.group_label, self.n_groups)}"
            if self.n_pairs is None or self.n_pairs == self.n_units * self.n_groups:
                basis = f"paired over {units} x {groups}"
            else:
                basis = (f"paired over {self.n_pairs} ({self.group_label}, {self.unit_label}) pairs "
                         f"from {units} and {groups}")
        if self.dropped:
            basis += f"; {self.dropped} unpaired or missing {_plural('value', self.dropped)} left out"
        return basis

    def sentence(self, name_a: str, name_b: str, metric: str = "Dice", digits: int = 3) -> str:
        """One English sentence; it names a winner only when the whole CI is on one side of 0.

        >>> Comparison(0.012, 0.004, 0.020, 0.95, None, 20, 3, "hierarchical bootstrap").sentence("A", "B")
        'A scores 0.012 higher Dice than B (95% CI 0.004 to 0.020, paired over 20 patients x 3 seeds).'
        """
        level = f"{round(self.ci * 100, 6):g}% CI"
        basis = self._basis()
        if self.direction > 0:
            return (f"{name_a} scores {self.difference:.{digits}f} higher {metric} than {name_b} "
                    f"({level} {self.low:.{digits}f} to {self.high:.{digits}f}, {basis}).")
        if self.direction < 0:
            # losses are said with A as the subject, so that negative transfer reads as such
            return (f"{name_a} scores {-self.difference:.{digits}f} lower {metric} than {name_b} "
                    f"({level} {-self.high:.{digits}f} to {-self.low:.{digits}f} lower, {basis}).")
        return (f"The data do not decide between {name_a} and {name_b}: difference {self.difference:.{digits}f} "
                f"({level} {self.low:.{digits}f} to {self.high:.{digits}f}, {basis}).")


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank and exact sign test on paired differences ``a - b``.

    ``n`` counts the pairs used, ``n_zero`` the zero differences (both tests leave them out).
    ``note`` says when p < 0.05 is out of reach whatever the data.
    """

    n: int
    n_positive: int
    n_negative: int
    n_zero: int
    median_difference: float
    wilcoxon_p: float
    sign_p: float
    note: str = ""


def _check_ci(ci: float, n_boot: int) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci must be between 0 and 1 (e.g. 0.95), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _paired_differences(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, int]:
    """``a - b`` as floats without the pairs where either value is missing, and how many those were."""
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired by position: got {x.size} and {y.size} values")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep] - y[keep], int((~keep).sum())


def _percentile_ci(boot: np.ndarray, ci: float) -> tuple[float, float]:
    low, high = np.nanquantile(boot, [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


def _bootstrap_p(boot: np.ndarray) -> float:
    """Two-sided p: twice the share of replicates on the far side of 0 (ties count on both sides).

    The +1 in numerator and denominator (Davison & Hinkley) keeps it above 0; it is below 1 - ci
    about when the percentile CI excludes 0. It inverts the CI rather than resampling under a null.
    """
    boot = boot[np.isfinite(boot)]
    tail = min(int((boot <= 0).sum()), int((boot >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (boot.size + 1)))


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    *,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    statistic: Callable[..., Any] = np.mean,
    unit_label: str = "patient",
) -> Comparison:
    """Percentile bootstrap CI for ``statistic(a - b)``, resampling the paired units with replacement.

    ``a[i]`` and ``b[i]`` belong to the same unit (patient). ``statistic`` is applied to the paired
    differences and must accept ``axis`` (``np.mean``: the difference of means; ``np.median``: the
    median paired difference). Pairs with a missing value are left out and counted in ``dropped``.
    ``p_value`` is two-sided: twice the share of resampled statistics on the far side of 0, so it is
    below 1 - ci about when the CI excludes 0. Assumes the units are independent draws; for several
    seeds per arm use :func:`hierarchical_bootstrap`.

    Used in chapter 3.
    """
    _check_ci(ci, n_boot)
    d, dropped = _paired_differences(a, b)
    n = d.size
    if n < 2:
        # one pair gives a zero-width CI, which would read as certainty
        raise ValueError(f"paired_bootstrap needs at least 2 complete pairs, got {n}")
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    step = max(1, _CHUNK // n)
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        boot[start:start + rows] = statistic(d[rng.integers(n, size=(rows, n))], axis=1)
    low, high = _percentile_ci(boot, ci)
    name = getattr(statistic, "__name__", "statistic")
    note = (f"only {n} {_plural(unit_label, n)}: a percentile bootstrap CI is too narrow with so few"
            if n < _FEW_UNITS else "")
    return Comparison(float(statistic(d)), low, high, ci, _bootstrap_p(boot), n, None,
                      f"paired bootstrap ({name} of differences, {n_boot} resamples)", dropped, n,
                      unit_label, note=note)


def _label(column: str) -> str:
    """``patient_id`` -> ``patient``: the singular noun the sentence uses for a column."""
    return column.removesuffix("_id").replace("_", " ")


def _arm_rows(df: pd.DataFrame, value: str, arm_col: str, arm: Any, keys: list[str]) -> pd.DataFrame:
    rows = df.loc[df[arm_col] == arm, [*keys, value]]
    if rows.empty:
        raise ValueError(f"no rows with {arm_col} == {arm!r}; present: {sorted(map(str, df[arm_col].unique()))}")
    dup = rows.duplicated(keys, keep=False)
    if dup.any():
        example = tuple(rows.loc[dup, keys].iloc[0])
        raise ValueError(f"arm {arm!r} has several rows per {tuple(keys)}, e.g. {example}; "
                         f"filter the table (dataset, label fraction, ...) so each pair occurs once")
    return rows


def _crossed_replicates(frame: pd.DataFrame, group: str, unit: str, n_boot: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Seeds and patients resampled independently; a patient's draw is shared by every seed."""
    table = frame.pivot(index=group, columns=unit, values="d")
    mask = table.notna().to_numpy(float)
    values = table.fillna(0.0).to_numpy(float)
    n_g, n_u = values.shape
    # multinomial counts = how often each seed / patient is drawn; the replicate is the weighted
    # mean over the cells that exist, so unequal coverage needs no special case
    wg = rng.multinomial(n_g, np.full(n_g, 1 / n_g), size=n_boot).astype(float)
    wu = rng.multinomial(n_u, np.full(n_u, 1 / n_u), size=n_boot).astype(float)
    num = ((wg @ values) * wu).sum(axis=1)
    den = ((wg @ mask) * wu).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _nested_replicates(frame: pd.DataFrame, group: str, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Seeds resampled, then patients resampled within each drawn seed, independently per draw."""
    per_group = [g["d"].to_numpy(float) for _, g in frame.groupby(group, sort=True)]
    n_g = len(per_group)
    drawn = rng.integers(n_g, size=(n_boot, n_g))
    sums, counts = np.zeros(n_boot), np.zeros(n_boot)
    for g, d in enumerate(per_group):
        rep = np.nonzero(drawn == g)[0]  # one entry per time seed g was drawn in replicate rep
        step = max(1, _CHUNK // d.size)
        for start in range(0, rep.size, step):
            r = rep[start:start + step]
            np.add.at(sums, r, d[rng.integers(d.size, size=(r.size, d.size))].sum(axis=1))
            np.add.at(counts, r, d.size)
    return sums / counts


def hierarchical_bootstrap(
    df: pd.DataFrame,
    value: str,
    arm_col: str,
    a: Any,
    b: Any,
    *,
    unit: str = "patient_id",
    group: str = "seed",
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    design: Literal["auto", "nested", "crossed"] = "auto",
) -> Comparison:
    """Two-level bootstrap CI for mean(A - B) over a long per-patient table with several seeds per arm.

    Pairs are (``group``, ``unit``) = (seed, patient) present in both arms: the same seed means the
    same split and initialisation, so only like is compared with like. Pairs present in one arm only,
    or with a missing value, are left out and counted in ``dropped``; none in common is a ValueError.
    The difference is the mean over all common pairs.

    Assumptions: seeds are independent draws of the training randomness, patients independent draws
    of the population, and each (seed, patient) occurs at most once per arm. ``design`` says how
    patients relate to seeds:

    * ``"nested"``: each seed has its own test patients (the split depends on the seed). Seeds are
      resampled with replacement, then patients with replacement within each drawn seed: the
      standard two-level bootstrap.
    * ``"crossed"``: every seed is scored on the same test patients. Seeds and patients are resampled
      independently and one patient draw is shared by all seeds; the nested scheme would understate
      the patient-to-patient spread of the difference by up to the number of seeds.
    * ``"auto"`` (default): ``"crossed"`` when some patient occurs under more than one seed.

    With few seeds (< 5) any bootstrap understates seed-to-seed spread; ``note`` says so.
    """
    _check_ci(ci, n_boot)
    missing = [c for c in (value, arm_col, unit, group) if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the table; it has {list(df.columns)}")
    keys = [group, unit]
    rows_a = _arm_rows(df, value, arm_col, a, keys)
    rows_b = _arm_rows(df, value, arm_col, b, keys)
    merged = rows_a.merge(rows_b, on=keys, suffixes=("_a", "_b"))
    if merged.empty:
        raise ValueError(
            f"arms {a!r} and {b!r} have no common ({group}, {unit}) pairs: {a!r} has {group} "
            f"{sorted(rows_a[group].unique().tolist())}, {b!r} has {sorted(rows_b[group].unique().tolist())}; "
            f"pairing needs the same {group} and {unit} in both arms")
    merged["d"] = merged[f"{value}_a"].astype(float) - merged[f"{value}_b"].astype(float)
    frame = merged.loc[np.isfinite(merged["d"]), [*keys, "d"]]
    dropped = len(rows_a) + len(rows_b) - 2 * len(frame)
    if len(frame) < 2:
        raise ValueError(f"hierarchical_bootstrap needs at least 2 complete pairs, got {len(frame)}")
    n_groups, n_units = frame[group].nunique(), frame[unit].nunique()
    if design == "auto":
        design = "crossed" if n_units < len(frame) else "nested"
    if design not in ("nested", "crossed"):
        raise ValueError(f"design must be 'auto', 'nested' or 'crossed', got {design!r}")
    rng = np.random.default_rng(seed)
    if design == "crossed":
        boot = _crossed_replicates(frame, group, unit, n_boot, rng)
    else:
        boot = _nested_replicates(frame, group, n_boot, rng)
    low, high = _percentile_ci(boot, ci)
    unit_label, group_label = _label(unit), _label(group)
    notes = []
    if n_groups < _FEW_GROUPS:
        notes.append(f"only {n_groups} {_plural(group_label, n_groups)}: the CI understates "
                     f"{group_label}-to-{group_label} spread; read it as optimistic")
    if n_units < _FEW_UNITS:
        notes.append(f"only {n_units} {_plural(unit_label, n_units)}: the CI is likely too narrow")
    return Comparison(float(frame["d"].mean()), low, high, ci, _bootstrap_p(boot), n_units, n_groups,
                      f"hierarchical bootstrap ({design}: {group} then {unit}, {n_boot} resamples)",
                      dropped, len(frame), unit_label, group_label, "; ".join(notes))


def paired_test(a: ArrayLike, b: ArrayLike) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test and exact sign test on the paired differences ``a - b``.

    Zero differences are left out of both tests (``zero_method="wilcox"``; the sign test counts
    positives among the non-zero ones), as are pairs with a missing value. With k non-zero
    differences neither test can go below p = 2 / 2**k, so for k < 6 p < 0.05 is out of reach and
    ``note`` says so: a "not significant" there says nothing about the arms.
    """
    d, _ = _paired_differences(a, b)
    n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
    k = n_pos + n_neg
    notes = []
    if d.size and k < d.size:
        notes.append(f"{d.size - k} zero {_plural('difference', d.size - k)} left out of both tests")
    if k == 0:
        # no non-zero difference: no evidence either way (scipy would warn and divide by zero)
        wilcoxon_p = sign_p = 1.0
        notes.append("no non-zero differences: nothing to test")
    else:
        wilcoxon_p = float(_st.wilcoxon(d[d != 0], zero_method="wilcox", alternative="two-sided").pvalue)
        sign_p = float(_st.binomtest(n_pos, k, 0.5, alternative="two-sided").pvalue)
        if k < 6:
            notes.append(f"with {k} non-zero {_plural('difference', k)} neither Wilcoxon nor the sign test "
                         f"can reach p < 0.05 (smallest possible p = {2 / 2 ** k:.3g})")
    median = float(np.median(d)) if d.size else float("nan")
    return PairedTest(int(d.size), n_pos, n_neg, int(d.size - k), median, wilcoxon_p, sign_p, "; ".join(notes))


def holm(pvalues: ArrayLike | Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order and shape (monotone, capped at 1).

    The i-th smallest of m p-values is multiplied by m - i + 1, then a running maximum keeps the
    order of the adjusted values the same as that of the raw ones.
    """
    p = np.asarray(pvalues, dtype=float)
    flat = p.ravel()
    if np.isnan(flat).any() or (flat < 0).any() or (flat > 1).any():
        raise ValueError(f"p-values must lie in [0, 1] without NaN, got {flat.tolist()}")
    m = flat.size
    order = np.argsort(flat, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(flat[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out.reshape(p.shape)


def multiplicity_note(n_comparisons: int, alpha: float = 0.05) -> str:
    """One sentence on what Holm's correction asks of a table with ``n_comparisons`` comparisons.

    >>> multiplicity_note(6)
    "This table makes 6 comparisons; with Holm's correction the smallest p must be below 0.0083 (0.05/6) at the first step, the next below 0.01, and so on up to 0.05 for the last (family-wise alpha 0.05)."
    """
    if n_comparisons < 1:
        raise ValueError(f"n_comparisons must be >= 1, got {n_comparisons}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    m = n_comparisons
    if m == 1:
        return f"This table makes 1 comparison, so no correction is needed: its p must be below {alpha:g}."
    head = (f"This table makes {m} comparisons; with Holm's correction the smallest p must be below "
            f"{alpha / m:.2g} ({alpha:g}/{m}) at the first step")
    if m == 2:
        return f"{head}, the other below {alpha:g} (family-wise alpha {alpha:g})."
    return (f"{head}, the next below {alpha / (m - 1):.2g}, and so on up to {alpha:g} for the last "
            f"(family-wise alpha {alpha:g}).")
