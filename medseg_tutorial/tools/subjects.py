"""How many subjects are behind a dataset's volumes? The evidence for chapter 3's split wording.

MSD Task04 Hippocampus holds 390 volumes (260 labelled here, 130 unlabelled test volumes) cropped
around the left and the right hippocampus of 195 subjects' T1 scans (the Decathlon's description of
the task: 90 healthy adults and 105 with a non-affective psychotic disorder). The files carry no
subject id, and their headers no position: every affine is the identity with origin (1, 1, 1). So a
split of the volumes is a **volume-level** split, and a subject's other hippocampus may sit on the
other side of it.

What the data still tell: the raw intensities of an MRI scan are in arbitrary units that differ
from scan to scan (here maxima from 112 to 1.7 million), so two crops of one scan share an intensity
"fingerprint". :func:`likely_pairs` finds volumes that are each other's nearest neighbour in that
fingerprint, far closer than volumes usually are: evidence of the pairs, not an exact pairing
(a subject whose twin is among the unlabelled test volumes has no partner here).

    python -m medseg_tutorial.tools.subjects msd_hippocampus      # prints the report as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.registry import iter_cases

__all__ = ["subject_report"]

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def fingerprints(name: str, root: str | Path | None = None) -> pd.DataFrame:
    """One row per volume: intensity percentiles, maximum, mean and std of the raw image (log-scaled)."""
    rows = []
    for case in iter_cases(name, root):
        x = case.image.astype(np.float64).ravel()
        rows.append({"patient_id": case.patient_id, **{f"p{q}": v for q, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))},
                     "max": x.max(), "mean": x.mean(), "std": x.std()})
    return pd.DataFrame(rows).set_index("patient_id")


def likely_pairs(prints: pd.DataFrame, ratio: float = 0.1) -> pd.DataFrame:
    """Mutual nearest neighbours in the standardised log-fingerprint, closer than ``ratio`` x the median
    distance between two volumes: ``a, b, distance`` per pair (each volume in at most one pair)."""
    z = np.log1p(prints.to_numpy() - prints.to_numpy().min(axis=0))
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    typical = np.median(d[np.triu_indices(len(d), 1)])
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    ids = prints.index.to_numpy()
    pairs = [(ids[i], ids[j], d[i, j]) for i, j in enumerate(nearest)
             if i < j and nearest[j] == i and d[i, j] < ratio * typical]
    out = pd.DataFrame(pairs, columns=["a", "b", "distance"])
    out.attrs["typical_distance"] = float(typical)
    return out


def twin_sides(split, pairs: pd.DataFrame) -> dict[str, str]:
    """For each test volume: where its likely twin is (``"train"``, ``"val"``, ``"test"``) or ``"none"``.

    Comparing test Dice of the volumes whose twin was trained on with the others measures what the
    residual subject leak of a volume-level split can be worth.
    """
    side = {p: name for name in ("train", "val", "test") for p in getattr(split, name)}
    twin = {**dict(zip(pairs["a"], pairs["b"])), **dict(zip(pairs["b"], pairs["a"]))}
    return {p: side.get(twin[p], "none") if p in twin else "none" for p in split.test}


def leak_effect(patients_csv: str | Path, name: str = "msd_hippocampus", root: str | Path | None = None,
                fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0, n_boot: int = 10_000) -> dict:
    """What the residual leak of a volume-level split is worth: test Dice of volumes whose likely twin
    (the other side's crop of the same scan) was trained on, minus that of the other test volumes.

    ``patients_csv`` is an experiment's per-patient table (``NAME_patients.csv``); each volume's Dice
    is averaged over classes and runs first, so the two groups are independent sets of volumes, and
    the interval is a percentile bootstrap that resamples the volumes of each group.

    Used in chapter 3.
    """
    from ..data.splits import patient_split

    prints = fingerprints(name, root)
    split = patient_split(list(prints.index), fractions, seed=seed)
    sides = twin_sides(split, likely_pairs(prints))
    dice = pd.read_csv(patients_csv).groupby("patient_id")["dice"].mean()
    dice = dice[dice.index.isin(split.test)]
    trained = dice[[sides[p] == "train" for p in dice.index]].to_numpy()
    other = dice[[sides[p] != "train" for p in dice.index]].to_numpy()
    rng = np.random.default_rng(seed)
    boots = [rng.choice(trained, len(trained)).mean() - rng.choice(other, len(other)).mean() for _ in range(n_boot)]
    return {"test_volumes": len(dice), "twin_in_training": len(trained), "others": len(other),
            "dice_twin_in_training": float(trained.mean()), "dice_others": float(other.mean()),
            "difference": float(trained.mean() - other.mean()),
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def subject_report(name: str = "msd_hippocampus", root: str | Path | None = None) -> dict:
    """Volumes, likely same-scan pairs and how close they are, as numbers for the book."""
    prints = fingerprints(name, root)
    pairs = likely_pairs(prints)
    numbers = {p: int("".join(c for c in p if c.isdigit()) or -1) for p in prints.index}
    consecutive = int(sum(abs(numbers[a] - numbers[b]) == 1 for a, b in zip(pairs["a"], pairs["b"])))
    return {
        "dataset": name, "volumes": len(prints), "likely_pairs": len(pairs),
        "volumes_in_likely_pairs": 2 * len(pairs),
        "pairs_with_consecutive_file_numbers": consecutive,
        "median_pair_distance": float(pairs["distance"].median()) if len(pairs) else None,
        "typical_distance": pairs.attrs["typical_distance"],
        "intensity_max_range": [float(prints["max"].min()), float(prints["max"].max())],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="msd_hippocampus")
    parser.add_argument("--root")
    parser.add_argument("--leak", metavar="PATIENTS_CSV",
                        help="also: test Dice of volumes whose twin was trained on vs the others, from this table")
    args = parser.parse_args(argv)
    print(json.dumps(subject_report(args.name, args.root), indent=2))
    if args.leak:
        print(json.dumps(leak_effect(args.leak, args.name, args.root), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
