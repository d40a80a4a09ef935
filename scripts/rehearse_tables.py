"""Rehearse the chapters on complete tables before the campaign has finished them.

The chapters read whatever rows are committed, and most of their code paths (three seeds per cell,
paired tests over every cell, Holm families, the tuned seeds of the optimizers table) only run once a
table is complete. This script copies ``book/results/cpu`` into a git worktree and fills every
planned run that has no row yet with a SYNTHETIC one: the row, curves and per-patient scores of a
finished run of the same cell (same arm, strategy and label fraction where there is one), its Dice
shifted by noise. Then it executes the chapters that read the tables, in that worktree.

    scripts/rehearse_tables.py [--worktree /tmp/rehearse] [--no-run] [--gpu] [CHAPTER.ipynb ...]

``--gpu`` also writes a SYNTHETIC ``book/results/gpu/`` table for every cpu table (the same rows as if
from the gpu preset, their Dice shifted by noise), so that the chapters' GPU-beside-CPU paths run
before a GPU machine has made the real ones.

The numbers are made up: they exist to exercise the chapters' code, never to be read or committed.
The worktree is detached at HEAD; the script refuses to write into this checkout's own tables.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TABLES = ("data_efficiency", "optimizers", "activation", "losses", "source_transfer", "leakage", "volumes",
          "reference")
CHAPTERS = ("03_data_and_splits", "04_losses_and_metrics", "05_activations", "06_optimizers",
            "07_transfer_strategies", "09_pros_cons", "10_volumes")


def is_dice(column: str) -> bool:
    """A Dice column of a results table, which the synthetic rows shift by noise."""
    return column.startswith("test_dice") or column == "val_dice_best"


def fill(folder: Path, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Add a synthetic row for every planned run missing from the tables in ``folder``: {table: (real, all)}."""
    from medseg_tutorial.experiment import (
        _config_text,
        _weights_label,
        check_config,
        expand_grid,
        load_experiment,
        tuned,
    )

    rng = random.Random(seed)
    counts = {}
    for name in TABLES:
        exp = load_experiment(name, "cpu")
        if not (folder / f"{name}.csv").exists():  # a table whose first row has not landed
            continue
        table, patients, curves = (pd.read_csv(folder / f"{name}{s}.csv") for s in ("", "_patients", "_curves"))
        if table.empty:
            continue
        arms = table["arm"].astype(str).replace("nan", "")
        sizes = table.groupby("label_fraction")["n_train_patients"].first().to_dict()
        done, new = set(table["run_id"]), {"": [table], "_patients": [patients], "_curves": [curves]}
        keep, waiting = tuned(exp, expand_grid(exp), table.to_dict("records"))
        for spec in keep + waiting:
            if spec.run_id in done:
                continue
            cfg = check_config(spec)
            same = table[(arms == spec.label) & (table["strategy"] == cfg.strategy.name)]
            closer = same[same["label_fraction"] == cfg.data.label_fraction]
            template = (closer if len(closer) else same if len(same) else table).sample(
                1, random_state=rng.randrange(2**31)).iloc[0]
            shift = rng.gauss(0, 0.01)
            row = template.to_dict() | {
                "run_id": spec.run_id, "arm": spec.label, "strategy": cfg.strategy.name,
                "weights": _weights_label(spec.raw), "label_fraction": cfg.data.label_fraction,
                "n_train_patients": sizes.get(cfg.data.label_fraction,
                                              max(1, round(cfg.data.label_fraction * max(sizes.values())))),
                "seed": cfg.train.seed, "loss": cfg.loss.name, "loss_mode": cfg.loss.mode,
                "optimizer": cfg.optim.name, "split": cfg.data.split_mode, "config": _config_text(spec),
                "hardware": "synthetic (scripts/rehearse_tables.py)"}  # the commit stays: one per table
            if isinstance(cfg.optim.lr, float):
                row["lr"] = cfg.optim.lr
            for key in row:
                if is_dice(key) and pd.notna(row[key]):
                    row[key] = float(row[key]) + shift
            new[""].append(pd.DataFrame([row]))
            for suffix, frame in (("_patients", patients), ("_curves", curves)):
                part = frame[frame["run_id"] == template["run_id"]].copy()
                part["run_id"] = spec.run_id
                if suffix == "_patients":
                    part["dice"] = part["dice"] + [rng.gauss(shift, 0.02) for _ in range(len(part))]
                new[suffix].append(part)
            done.add(spec.run_id)
        for suffix, frames in new.items():
            pd.concat(frames, ignore_index=True).to_csv(folder / f"{name}{suffix}.csv", index=False)
        counts[name] = (len(table), len(done))
    return counts


def fake_gpu(cpu: Path, gpu: Path, seed: int = 1) -> list[str]:
    """Write a SYNTHETIC gpu table for every cpu table in ``cpu``: its rows, as if from the gpu preset."""
    rng = random.Random(seed)
    gpu.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        if not (cpu / f"{name}.csv").exists():
            continue
        table = pd.read_csv(cpu / f"{name}.csv").assign(
            preset="gpu", hardware="synthetic GPU (scripts/rehearse_tables.py)")
        for col in filter(is_dice, table.columns):
            table[col] = (table[col] + [rng.gauss(0, 0.005) for _ in range(len(table))]).clip(0, 1)
        table.to_csv(gpu / f"{name}.csv", index=False)
        patients = pd.read_csv(cpu / f"{name}_patients.csv")
        patients["dice"] = (patients["dice"] + [rng.gauss(0, 0.01) for _ in range(len(patients))]).clip(0, 1)
        patients.to_csv(gpu / f"{name}_patients.csv", index=False)
        shutil.copyfile(cpu / f"{name}_curves.csv", gpu / f"{name}_curves.csv")
        written.append(name)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worktree", type=Path, default=Path("/tmp/rehearse"))
    parser.add_argument("--no-run", action="store_true", help="fill the tables, do not execute the chapters")
    parser.add_argument("--gpu", action="store_true", help="also write synthetic gpu tables (book/results/gpu)")
    parser.add_argument("chapters", nargs="*", help="notebooks to execute (default: those that read tables)")
    args = parser.parse_args()
    tree = args.worktree.resolve()
    if tree == REPO or REPO in tree.parents:
        sys.exit(f"{tree}: inside this checkout; the synthetic tables must not land in its book/results")
    if tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), "HEAD"], check=True)
    results = tree / "book" / "results" / "cpu"
    shutil.copytree(REPO / "book" / "results" / "cpu", results, dirs_exist_ok=True)  # rows not yet committed too
    for name, (real, total) in fill(results).items():
        print(f"{name}: {real} real rows, {total - real} synthetic")
    if args.gpu:
        print("synthetic gpu tables:", ", ".join(fake_gpu(results, results.parent / "gpu")))
    if args.no_run:
        return 0
    chapters = args.chapters or [f"book/{c}.ipynb" for c in CHAPTERS]
    env = os.environ | {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}  # the kernels import the worktree
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *chapters],
                          cwd=tree, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
