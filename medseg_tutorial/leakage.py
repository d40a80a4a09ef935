"""Data leakage made visible without training anything: the nearest-neighbour *memoriser* (chapter 3).

The memoriser is the laziest possible segmenter. To segment a test slice it looks through the
training slices, finds the one whose image is most similar (highest Pearson correlation of
downsampled intensities), and returns that slice's reference mask. It learns nothing about
anatomy: it can only recall what it has seen. That makes it an honest probe of leakage:

* with a **slice-level** split, the nearest training slice of a test slice is almost always a
  neighbouring slice of the *same patient* (about a millimetre away, nearly the same picture and
  nearly the same mask), so recall looks like skill;
* with a **patient-level** split, it must fall back on other patients, and its score drops to what
  recalling anatomy from *other people* is worth.

The gap between the two scores is leakage, measured in Dice. A CNN can memorise too, so the same
gap appears in trained networks (the book's experiment ``medseg experiment leakage``), but the
memoriser shows it in seconds on a CPU.

>>> from medseg_tutorial.data.prepare import prepare_dataset           # doctest: +SKIP
>>> table = prepare_dataset("msd_hippocampus", size=(64, 64))        # doctest: +SKIP
>>> leakage_experiment(table, seeds=(0, 1, 2))                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .data.splits import leakage_report, patient_split, slice_split
from .data.types import SliceTable
from .metrics import per_patient_scores

__all__ = [
    "leakage_experiment",
    "memorise",
    "plot_leakage",
    "split_rows",
    "summarize_leakage",
]

SPLIT_KINDS = ("slice", "patient")


def slice_features(images: np.ndarray | torch.Tensor, size: int = 16) -> torch.Tensor:
    """One unit-length vector per slice, so that a dot product is a Pearson correlation.

    ``images`` (N, C, H, W) are average-pooled to ``size`` x ``size`` per channel (cheap, and it
    ignores pixel noise), flattened, centred and scaled to unit norm. A constant slice becomes the
    zero vector (correlation 0 with everything).
    """
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x = F.adaptive_avg_pool2d(x, (min(size, x.shape[-2]), min(size, x.shape[-1]))).flatten(1)
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


@dataclass
class MemoriserPrediction:
    """What the memoriser predicted for each test row: masks, and which training row each was copied from."""

    test_rows: np.ndarray  # (M,) rows of the table that were segmented
    neighbours: np.ndarray  # (M,) row of the training slice whose mask was copied
    similarity: np.ndarray  # (M,) correlation of each test slice with its neighbour
    masks: np.ndarray  # (M, H, W) predicted label maps

    def same_patient(self, table: SliceTable) -> float:
        """Fraction of test slices whose nearest training slice belongs to the same patient."""
        if len(self.test_rows) == 0:
            return float("nan")
        return float((table.patient_ids[self.neighbours] == table.patient_ids[self.test_rows]).mean())


def memorise(
    table: SliceTable,
    train_rows: Sequence[int],
    test_rows: Sequence[int],
    size: int = 16,
    chunk: int = 2048,
    features: torch.Tensor | None = None,
) -> MemoriserPrediction:
    """Segment ``test_rows`` by copying the mask of the most correlated slice among ``train_rows``.

    ``features`` may hold :func:`slice_features` of the *whole* table (row ``i`` for table row
    ``i``), computed once and reused across splits; by default they are computed here.

    Used in chapters 3 and 4.
    """
    train_rows = np.asarray(train_rows, dtype=np.int64)
    test_rows = np.asarray(test_rows, dtype=np.int64)
    if len(train_rows) == 0:
        raise ValueError("the memoriser needs at least one training slice")
    if features is None:
        train_f, test_f = (
            slice_features(table.images[train_rows], size),
            slice_features(table.images[test_rows], size),
        )
    else:
        if len(features) != len(table):
            raise ValueError(f"features has {len(features)} rows for a table of {len(table)} slices")
        train_f, test_f = features[train_rows], features[test_rows]
    best = np.empty(len(test_rows), dtype=np.int64)
    sim = np.empty(len(test_rows), dtype=np.float32)
    for start in range(0, len(test_rows), chunk):  # bounded memory: chunk x n_train similarities at a time
        s = test_f[start : start + chunk] @ train_f.T
        value, index = s.max(dim=1)
        best[start : start + chunk] = index.numpy()
        sim[start : start + chunk] = value.numpy()
    neighbours = train_rows[best]
    return MemoriserPrediction(test_rows, neighbours, sim, table.masks[neighbours])


def memoriser_scores(
    table: SliceTable,
    train_rows: Sequence[int],
    test_rows: Sequence[int],
    size: int = 16,
    features: torch.Tensor | None = None,
) -> tuple[pd.DataFrame, MemoriserPrediction]:
    """Per-patient 3-D Dice of the memoriser on ``test_rows``.

    Returns ``(scores, prediction)``: ``scores`` has one row per test patient with ``dice`` (mean
    over the foreground classes that are defined for that patient) and ``slices`` (how many of
    the patient's slices were in the test rows); a patient whose test slices have no foreground,
    truly or predicted, gets NaN (nothing to score).
    """
    pred = memorise(table, train_rows, test_rows, size, features=features)
    rows = pred.test_rows
    per_class = per_patient_scores(
        pred.masks,
        table.masks[rows],
        table.patient_ids[rows],
        table.info.num_classes,
        slice_index=table.slice_index[rows],
    )
    scores = per_class.groupby("patient_id", sort=False)["dice"].mean().rename("dice").to_frame()
    counts = pd.Series(table.patient_ids[rows]).value_counts()
    scores["slices"] = counts.reindex(scores.index).to_numpy()
    return scores.reset_index(), pred


def split_rows(
    table: SliceTable, kind: str, seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> dict[str, np.ndarray]:
    """Row indices per subset for a ``"patient"``-level (correct) or ``"slice"``-level (leaky) split.

    Used in chapter 3.
    """
    if kind == "patient":
        return patient_split(table.patient_ids, fractions, seed=seed).indices(table)
    if kind == "slice":
        return slice_split(len(table), fractions, seed=seed)
    raise ValueError(f"unknown split kind {kind!r}; use one of {SPLIT_KINDS}")


def leakage_experiment(
    table: SliceTable,
    seeds: Iterable[int] = (0, 1, 2),
    kinds: Sequence[str] = SPLIT_KINDS,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    size: int = 16,
) -> pd.DataFrame:
    """Memoriser Dice on the test subset under each split kind and seed.

    One row per (kind, seed) with: ``dataset, split, seed, dice`` (mean over test patients of the
    per-patient Dice), ``dice_std`` (spread across those patients), ``test_patients``,
    ``test_slices``, ``shared_patients`` (patients with slices in both train and test),
    ``test_slices_from_train_patients`` (fraction) and ``neighbour_same_patient`` (fraction of test
    slices whose copied mask came from their own patient).

    Used in chapter 3.
    """
    records = []
    features = slice_features(table.images, size)  # once for all splits
    for seed in seeds:
        for kind in kinds:
            rows = split_rows(table, kind, seed, fractions)
            scores, pred = memoriser_scores(table, rows["train"], rows["test"], size, features=features)
            report = leakage_report(table, {"train": rows["train"], "test": rows["test"]})
            train_patients = set(table.patient_ids[rows["train"]].tolist())
            records.append(
                {
                    "dataset": table.info.name,
                    "split": kind,
                    "seed": int(seed),
                    "dice": float(scores["dice"].mean()),
                    "dice_std": float(scores["dice"].std()),
                    "test_patients": report["patients"]["test"],
                    "test_slices": report["slices"]["test"],
                    "shared_patients": report["shared_patients"]["train&test"],
                    "test_slices_from_train_patients": float(
                        np.isin(table.patient_ids[rows["test"]], list(train_patients)).mean()
                    ),
                    "neighbour_same_patient": pred.same_patient(table),
                }
            )
    return pd.DataFrame.from_records(records)


def summarize_leakage(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of the memoriser Dice, per dataset and split kind. Used in chapter 3."""
    grouped = results.groupby(["dataset", "split"], sort=False)
    out = grouped.agg(
        seeds=("seed", "nunique"),
        dice_mean=("dice", "mean"),
        dice_sd_over_seeds=("dice", "std"),
        shared_patients=("shared_patients", "mean"),
        neighbour_same_patient=("neighbour_same_patient", "mean"),
    )
    return out.reset_index()


def plot_leakage(results: pd.DataFrame, ax=None, colors: Mapping[str, str] | None = None):
    """Memoriser Dice per dataset and split kind: one dot per seed, a bar at the mean. Returns the Axes.

    Used in chapter 3.
    """
    import matplotlib.pyplot as plt  # optional: plotting only

    colors = dict(colors or {"slice": "tab:red", "patient": "tab:blue"})
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    datasets = list(dict.fromkeys(results["dataset"]))
    kinds = [k for k in SPLIT_KINDS if k in set(results["split"])]
    width = 0.8 / max(1, len(kinds))
    rng = np.random.default_rng(0)  # horizontal jitter of the dots only
    for i, name in enumerate(datasets):
        for j, kind in enumerate(kinds):
            values = results.loc[(results["dataset"] == name) & (results["split"] == kind), "dice"].to_numpy()
            x = i + (j - (len(kinds) - 1) / 2) * width
            label = f"{kind}-level split" if i == 0 else None
            ax.bar(x, values.mean(), width * 0.9, color=colors.get(kind), alpha=0.35, label=label)
            ax.scatter(
                x + rng.uniform(-width / 6, width / 6, len(values)),
                values,
                color=colors.get(kind),
                s=14,
                zorder=3,
            )
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set(ylabel="memoriser Dice per patient (test)", ylim=(0, 1))
    ax.legend(loc="upper right")
    return ax
