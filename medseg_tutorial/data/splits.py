"""Train/validation/test splits by patient, data-efficiency subsets, and the leakage demonstration.

Neighbouring slices of one patient look almost alike, so a test set is only honest if none of its
patients gave a slice to training. :func:`slice_split` is the *deliberately wrong* split by slices.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .types import SliceTable

SUBSETS = ("train", "val", "test")
SPLIT_FORMAT = 1


@dataclass
class Split:
    """Patient ids per subset, with the seed and fractions that produced them. Used in chapters 7 and 8."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    dataset: str = ""
    stratified: bool = False
    extra: dict = field(default_factory=dict)  # free-form provenance, saved with the manifest

    def __post_init__(self) -> None:
        subsets = {name: set(getattr(self, name)) for name in SUBSETS}
        for a, b in itertools.combinations(SUBSETS, 2):
            shared = subsets[a] & subsets[b]
            if shared:
                raise ValueError(f"patients in both {a} and {b}: {sorted(shared)[:5]}")

    def counts(self) -> dict[str, int]:
        """Number of patients per subset."""
        return {name: len(getattr(self, name)) for name in SUBSETS}

    def indices(self, table: SliceTable) -> dict[str, np.ndarray]:
        """Row indices of ``table`` for each subset (slices follow their patient)."""
        return {name: table.rows_for(getattr(self, name)) for name in SUBSETS}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    if fractions[0] == 0:
        raise ValueError("the training fraction must be > 0")
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def _subset_sizes(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Sizes per subset that sum to ``n``, with at least one item in every non-zero subset."""
    need = sum(f > 0 for f in fractions)
    if n < need:
        raise ValueError(f"{n} patients cannot fill {need} non-empty subsets")
    sizes = [max(1, round(f * n)) if f > 0 else 0 for f in fractions[1:]]
    while n - sum(sizes) < 1:  # rounding up tiny subsets must not leave training empty
        k = int(np.argmax(sizes))
        sizes[k] -= 1
    return [n - sum(sizes), *sizes]


def _spread_labels(sizes: Sequence[int]) -> np.ndarray:
    """Subset labels 0/1/2 with the given counts, spread evenly along the sequence.

    Label k's j-th occurrence sits at (j + 0.5) / size_k: sorting by position interleaves the subsets,
    so every contiguous block (one stratum) gets its fair share of each.
    """
    keys = np.concatenate([(np.arange(s) + 0.5) / s for s in sizes if s > 0])
    labels = np.concatenate([np.full(s, k) for k, s in enumerate(sizes) if s > 0])
    return labels[np.argsort(keys, kind="stable")]


def patient_split(
    patient_ids: Sequence[str] | np.ndarray | SliceTable,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify: Mapping[str, str | int] | None = None,
) -> Split:
    """Split unique patient ids into train/val/test, deterministically for a given ``seed``.

    ``patient_ids`` may repeat (one entry per slice) or be a :class:`SliceTable`. ``stratify`` maps
    each patient to a group (a scanner, a diagnosis); each group is then spread over the subsets in
    proportion. Every subset with a non-zero fraction gets at least one patient.

    Used in chapters 3-8 and 10.
    """
    dataset = ""
    if isinstance(patient_ids, SliceTable):
        dataset, patient_ids = patient_ids.info.name, patient_ids.patient_ids
    fractions = _check_fractions(fractions)
    # sorting first makes the result independent of the order the ids arrive in
    unique = sorted({str(p) for p in patient_ids})
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    if stratify is not None:
        missing = [p for p in unique if p not in stratify]
        if missing:
            raise ValueError(f"stratify has no group for patients {missing[:5]}")
        # group by stratum (stable: random order inside each group), then deal labels evenly
        order.sort(key=lambda p: str(stratify[p]))
    labels = _spread_labels(_subset_sizes(len(order), fractions))
    subsets = {name: sorted(p for p, lab in zip(order, labels) if lab == k) for k, name in enumerate(SUBSETS)}
    return Split(**subsets, seed=seed, fractions=fractions, dataset=dataset, stratified=stratify is not None)


def label_fraction(train: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """A random ``fraction`` of the training patients, for data-efficiency experiments.

    Nested by construction: for one seed, the patients of a smaller fraction are a subset of those
    of a larger one (both are prefixes of the same shuffled order). At least one patient is kept.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    unique = sorted(set(map(str, train)))
    if not unique:
        raise ValueError("no training patients to subsample")
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    return sorted(order[: max(1, round(fraction * len(unique)))])


def slice_split(
    n_slices: int | SliceTable, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, np.ndarray]:
    """WRONG ON PURPOSE: split slice rows at random, ignoring which patient they belong to.

    A patient's slices end up in training and test alike, so test scores are inflated. It exists only
    to demonstrate leakage (:func:`leakage_report`); never report results with it. Used in chapter 3.
    """
    n = len(n_slices) if isinstance(n_slices, SliceTable) else int(n_slices)
    sizes = _subset_sizes(n, _check_fractions(fractions))
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum(sizes)[:-1]
    return {name: np.sort(part) for name, part in zip(SUBSETS, np.split(perm, bounds))}


def leakage_report(table: SliceTable, split_indices: Mapping[str, np.ndarray] | Split) -> dict:
    """Count patients (and their slices) that appear in more than one subset; a sound split has none.

    ``split_indices`` maps subset names to row indices of ``table`` (as :func:`slice_split` returns),
    or is a :class:`Split`. Used in chapter 3.
    """
    if isinstance(split_indices, Split):
        split_indices = split_indices.indices(table)
    patients = {name: set(table.patient_ids[np.asarray(idx, int)].tolist()) for name, idx in split_indices.items()}
    shared = {}
    leaking: set[str] = set()
    for a, b in itertools.combinations(patients, 2):
        both = patients[a] & patients[b]
        shared[f"{a}&{b}"] = len(both)
        leaking |= both
    test_name = "test" if "test" in split_indices else list(patients)[-1]
    test_rows = np.asarray(split_indices[test_name], int)
    return {
        "patients": {name: len(p) for name, p in patients.items()},
        "slices": {name: len(idx) for name, idx in split_indices.items()},
        "shared_patients": shared,
        "leaking_patients": len(leaking),
        # share of evaluation slices whose patient was also seen elsewhere (in training, usually)
        "test_slices_from_leaking_patients": float(np.isin(table.patient_ids[test_rows], list(leaking)).mean())
        if len(test_rows) else 0.0,
    }


def save_split(split: Split, path: str | os.PathLike, dataset: str | None = None) -> Path:
    """Write ``split`` as a small JSON manifest (dataset, seed, fractions, counts, patient ids).

    Used in chapters 3, 7 and 8.
    """
    path = Path(path)
    manifest = {"format": SPLIT_FORMAT, "dataset": dataset if dataset is not None else split.dataset,
                "seed": split.seed, "fractions": list(split.fractions), "stratified": split.stratified,
                "counts": split.counts(), **{name: list(getattr(split, name)) for name in SUBSETS},
                "extra": split.extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_split(path: str | os.PathLike) -> Split:
    """Read a manifest written by :func:`save_split`; checks it is complete and consistent. Used in chapter 3."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON split manifest ({err})") from err
    missing = [k for k in (*SUBSETS, "seed", "fractions") if k not in manifest]
    if missing:
        raise ValueError(f"{path}: split manifest lacks {missing}")
    split = Split(
        **{name: [str(p) for p in manifest[name]] for name in SUBSETS},
        seed=int(manifest["seed"]),
        fractions=tuple(manifest["fractions"]),
        dataset=manifest.get("dataset", ""),
        stratified=bool(manifest.get("stratified", False)),
        extra=manifest.get("extra", {}),
    )
    if "counts" in manifest and manifest["counts"] != split.counts():
        raise ValueError(f"{path}: counts {manifest['counts']} do not match the lists {split.counts()}")
    return split
