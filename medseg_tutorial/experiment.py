"""Grids of training runs -> one results table (CSV) per experiment: the numbers the book plots.

An experiment is one YAML file in ``configs/experiments/``::

    name: data_efficiency
    config:                       # the training config every run shares (sections as in configs/*.yaml)
      data: {dataset: msd_hippocampus, size: [64, 64]}
      model: {encoder: efficientnet-lite0, weights: imagenet}
    grid:                         # one run per combination of the axes' values
      train.seed: [0, 1, 2]
      data.label_fraction: [0.05, 0.25, 1.0]
      strategy.name:              # a value may be a mapping that sets several keys together
        - {strategy.name: scratch, model.weights: null}
        - full_finetune
    presets:                      # per-hardware sizes and the table each writes
      cpu: {results: book/results/cpu/data_efficiency.csv, config: {train: {epochs: 6}}}
      gpu: {results: book/results/gpu/data_efficiency.csv, config: {data: {size: [128, 128]}}}
    smoke: {data.dataset: phantom} # extra overrides of the grid's runs in --smoke mode (not of sources)
    sources:                      # optional: pretraining runs that `model.source: NAME` names
      acdc: {data: {dataset: acdc}, loss: {name: null}}

Each run trains in its own folder under the cache (``<cache>/experiments/<name>/<preset>/<run_id>``,
never in the repository), then its best checkpoint (chosen on validation) is scored once on the
fixed patient-level test split, and ONE row is appended to the results CSV. ``run_id`` is a hash of
the run's complete config mapping, so re-running a sweep skips the rows already in the table and
resumes a run that was interrupted half-way. A row deleted from the table is written again from
its finished run folder; delete the run folder as well to train that run afresh.

Every run is one typed :class:`~medseg_tutorial.config.Config`: the grid only sets its keys. Two keys
matter to the runner:

* ``model.source: NAME`` first trains the ``sources: NAME`` config (e.g. ACDC) and starts the run
  from its best checkpoint (cached under the cache dir, shared by all runs that use it);
* ``optim.lr_find: {...}`` makes the trainer run the LR range test first and train at its
  suggestion (recorded in the ``lr`` column).

``--smoke`` runs one combination (the first value of every axis) for two steps on 32 px slices,
into a temporary folder: a check, for CI, that every experiment file still runs.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from . import __version__
from .config import (
    Config,
    ConfigError,
    config_folders,
    deep_merge,
    find_config,
    get_dotted,
    load_config,
    set_dotted,
)
from .files import atomic_write, exclusive_lock, write_csv
from .paths import cache_dir
from .provenance import git_commit, hardware_label

# Experiment (what load_experiment returns) by module path
__all__ = ["coverage", "list_experiments", "load_experiment", "run_experiment"]

# Smoke runs: a couple of steps of a shallow network on tiny slices, on the CPU.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.size": [32, 32],
    "data.augment": "none",
    "model.smp_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "train.epochs": 1,
    "train.max_steps_per_epoch": 2,
    "train.batch_size": 4,
    "train.device": "cpu",
    "train.amp": "off",
    "train.compile": False,
    "train.num_workers": 0,
    "train.patience": None,
    "output.tensorboard": False,
}
SMOKE_LR_FIND_ITERATIONS = 4  # smoke runs with optim.lr_find sweep this many batches

# Columns of the results table, in this order; test_dice_<class> columns follow test_dice.
COLUMNS = (
    "experiment", "run_id", "preset", "arm", "dataset", "strategy", "encoder", "weights", "label_fraction",
    "n_train_patients", "seed", "loss", "loss_mode", "optimizer", "lr", "split", "n_test_patients", "test_dice",
)
TAIL_COLUMNS = (
    "val_dice_best", "best_epoch", "epochs", "stopped_early", "n_params", "test_seconds", "wall_time_s", "hardware",
    "commit", "package_version", "config",
)


# ==================================================================================================
# Experiment files
# ==================================================================================================


@dataclass
class Experiment:
    """One experiment file with a preset applied."""

    name: str
    path: Path
    preset: str | None
    config: dict[str, Any]  # training config mapping shared by all runs (base file + config + preset)
    grid: dict[str, list[Any]]  # axis -> values
    results: Path | None  # the CSV this preset writes
    description: str = ""
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> config sections
    smoke: dict[str, Any] = field(default_factory=dict)  # extra dotted overrides in smoke mode
    budget: dict[str, Any] = field(default_factory=dict)  # the compute plan's measured figures (see compute_plan)
    tune: dict[str, Any] = field(default_factory=dict)  # {axis, seed}: later seeds run each label's best value


@dataclass
class RunSpec:
    """One run of the grid: its overrides, its complete config mapping and its id."""

    run_id: str
    overrides: dict[str, Any]  # dotted key -> value, what distinguishes this run
    raw: dict[str, Any]  # the complete config mapping (before ``load_config``)
    label: str = ""  # the ``label`` of its mapping values, e.g. "sgd-nnunet" (the table's ``arm`` column)
    points: dict[str, Any] = field(default_factory=dict)  # axis -> the value this run takes on it


def find_experiment(name: str | os.PathLike) -> Path:
    """An experiment file: a path, or a name such as ``"data_efficiency"`` in ``configs/experiments/``."""
    try:
        return find_config(name, "experiments")
    except FileNotFoundError:
        known = ", ".join(list_experiments()) or "none found"
        raise FileNotFoundError(f"experiment {str(name)!r} not found (known: {known})") from None


def list_experiments() -> list[str]:
    """Names of the experiment files shipped in ``configs/experiments/``."""
    return sorted({p.stem for folder in config_folders("experiments") if folder.is_dir() for p in folder.glob("*.yaml")})


def _project_root(path: Path) -> Path:
    """The folder holding ``configs/`` when the file is in ``<root>/configs/experiments``, else the cwd."""
    path = path.resolve()
    return path.parents[2] if path.parent.name == "experiments" and path.parent.parent.name == "configs" else Path.cwd()


def default_preset() -> str:
    """``gpu`` when CUDA is available, else ``cpu``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def load_experiment(name: str | os.PathLike, preset: str | None = None) -> Experiment:
    """Read an experiment file and apply ``preset`` (default: ``gpu`` with CUDA, else ``cpu``).

    Used in chapter 10.
    """
    path = find_experiment(name)
    spec = yaml.safe_load(path.read_text()) or {}
    known = {"name", "description", "base", "base_preset", "config", "grid", "presets", "sources", "smoke",
             "results", "budget", "tune"}
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
    presets = spec.get("presets") or {}
    if preset is None:
        preset = default_preset() if presets else None
    if preset is not None and preset not in presets:
        raise ConfigError(f"preset: {path.name} has no preset {preset!r} (it has: {', '.join(presets) or 'none'})")
    chosen = presets.get(preset, {}) if preset else {}
    unknown = set(chosen) - {"config", "grid", "results", "sources", "smoke", "budget"}
    if unknown:
        raise ConfigError(f"presets.{preset}: unknown keys {sorted(unknown)} "
                          "(known: budget, config, grid, results, sources, smoke)")
    budget = {**(spec.get("budget") or {}), **(chosen.get("budget") or {})}
    unknown = set(budget) - set(BUDGET_KEYS)
    if unknown:
        raise ConfigError(f"{path.name}: budget: unknown keys {sorted(unknown)} (known: {', '.join(BUDGET_KEYS)})")

    config: dict[str, Any] = {}
    if spec.get("base"):  # start from a configs/*.yaml (its own preset applied, defaults filled in)
        config = load_config(spec["base"], preset=spec.get("base_preset"), resolve=False).to_dict()
        config.pop("preset", None)
    config = deep_merge(deep_merge(config, spec.get("config")), chosen.get("config"))
    grid = {**(spec.get("grid") or {}), **(chosen.get("grid") or {})}  # a preset replaces whole axes
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{axis}: must be a non-empty list of values")
    sources = {k: deep_merge(v, (chosen.get("sources") or {}).get(k)) for k, v in (spec.get("sources") or {}).items()}
    results = chosen.get("results", spec.get("results"))
    if results is not None:  # relative to the project, so the table lands in book/results from any cwd
        results = _project_root(path) / results
    tune = spec.get("tune") or {}
    if tune and (set(tune) != {"axis", "seed"} or tune["axis"] not in grid or "train.seed" not in grid
                 or tune["seed"] not in grid["train.seed"]):
        raise ConfigError(f"{path.name}: tune: expected {{axis: AXIS, seed: SEED}} with AXIS a grid axis and SEED "
                          f"one of grid train.seed, got {tune}")
    return Experiment(
        name=str(spec.get("name", path.stem)), path=path, preset=preset, config=config, grid=grid, results=results,
        tune=dict(tune),
        description=str(spec.get("description", "")).strip(), sources=sources,
        smoke={**(spec.get("smoke") or {}), **(chosen.get("smoke") or {})}, budget=budget,
    )


# ==================================================================================================
# The compute plan
# ==================================================================================================

# budget keys: step_seconds (one optimizer step, measured), eval_seconds (one validation pass),
# test_seconds (the final test scoring), cpu_hours (this experiment's share of the campaign), note.
# The three timings are one number, or a mapping from arm label to number (key "default": the other
# arms), for a grid whose arms differ in cost (chapter 10: 2-D slices next to 3-D patches).
BUDGET_KEYS = ("step_seconds", "eval_seconds", "test_seconds", "cpu_hours", "note")


def _seconds(value: Any, spec: RunSpec) -> float:
    """A budget timing for ``spec``: the number, or its arm's entry of a per-arm mapping."""
    if isinstance(value, dict):
        value = value.get(spec.label, value.get("default", 0))
    return float(value or 0)


def _seconds_text(value: Any) -> str:
    """``"0.40"``, or for a per-arm mapping the range of its values, ``"0.18-0.64"``."""
    values = sorted(float(v or 0) for v in (value.values() if isinstance(value, dict) else [value]))
    return f"{values[0]:.2f}" + (f"-{values[-1]:.2f}" if values[-1] != values[0] else "")


def _run_cap(raw: dict[str, Any]) -> tuple[int | None, int]:
    """(most optimizer steps, most validations) of a run, from its train section (None: no step cap)."""
    epochs = int(get_dotted(raw, "train.epochs") or 1)
    per_epoch = get_dotted(raw, "train.max_steps_per_epoch")
    val_every = int(get_dotted(raw, "train.val_every") or 1)
    return (epochs * int(per_epoch) if per_epoch else None), -(-epochs // val_every)


def compute_plan(exp: Experiment, planned: list[RunSpec], finished: list[dict[str, str]],
                 later: list[RunSpec] = ()) -> str:
    """What the pending runs will cost, in CPU-hours (one torch thread per run), before any starts.

    The upper bound trains every pending run to its step cap at the measured ``budget.step_seconds``
    (early stopping usually ends a run sooner); once runs have finished, the estimate scales that bound
    by their wall time over their own bound, or uses their mean wall time where a run has no step cap.
    Source runs are not counted; ``later`` runs (waiting for a tuning seed, see :func:`tuned`) are.
    """
    b = exp.budget
    done_ids = {r.get("run_id") for r in finished}
    todo = [spec for spec in planned if spec.run_id not in done_ids]
    pending = todo + list(later)
    lines = [f"compute plan for {exp.name} ({exp.preset or 'no preset'}): {len(planned) + len(later)} runs, "
             f"{len(planned) - len(todo)} done, {len(pending)} to run"
             + (f" ({len(later)} of them after the tuning seed)" if later else "")]
    step = b.get("step_seconds")
    if step is None:
        lines.append("  no budget.step_seconds in the experiment file: no CPU-hour estimate")
        return "\n".join(lines)
    def bound(specs: list[RunSpec]) -> float | None:  # seconds for every run to its step cap, None: no cap
        caps = [_run_cap(spec.raw) for spec in specs]
        if any(steps is None for steps, _ in caps):
            return None
        return sum(steps * _seconds(step, spec) + vals * _seconds(b.get("eval_seconds"), spec)
                   + _seconds(b.get("test_seconds"), spec) for spec, (steps, vals) in zip(specs, caps))

    seconds = bound(pending)
    if seconds is not None:
        longest = max((_run_cap(spec.raw)[0] for spec in pending), default=0)
        lines.append(f"  upper bound {seconds / 3600:.1f} CPU-hours: every run to its step cap (at most {longest} "
                     f"steps) at {_seconds_text(step)} s per step, {_seconds_text(b.get('eval_seconds', 0))} s "
                     "per validation")
    by_id = {spec.run_id: spec for spec in planned}
    timed = [(by_id.get(r.get("run_id")), float(r["wall_time_s"])) for r in finished
             if r.get("wall_time_s") not in (None, "")]
    if timed and pending:
        walls = [wall for _, wall in timed]
        mean = sum(walls) / len(walls)
        # The finished runs calibrate the budget's timings: they ran on this machine, under its real load,
        # with early stopping; their wall time over their own bound scales the pending runs' bound (a plain
        # mean would price a 5 %-data run like the full-data runs that happened to finish first).
        done_bound = bound([spec for spec, _ in timed]) if all(spec for spec, _ in timed) else None
        if seconds and done_bound:
            ratio = sum(walls) / done_bound
            lines.append(f"  the {len(walls)} finished runs took {ratio:.2f} x their bound ({mean:.0f} s each on "
                         f"average): about {ratio * seconds / 3600:.1f} CPU-hours still to go"
                         + (" (the budget's timings are below this machine's: re-measure them)" if ratio > 1 else ""))
        else:
            lines.append(f"  the {len(walls)} finished runs took {mean:.0f} s each on average: about "
                         f"{mean * len(pending) / 3600:.1f} CPU-hours still to go")
    if b.get("cpu_hours") is not None:
        lines.append(f"  budget of this experiment: {b['cpu_hours']} CPU-hours" +
                     (f" ({b['note']})" if b.get("note") else ""))
    return "\n".join(lines)


# ==================================================================================================
# The grid
# ==================================================================================================


def _point_overrides(axis: str, value: Any) -> dict[str, Any]:
    """The dotted overrides one axis value stands for."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "label"}  # ``label`` names the point, sets nothing
    if "." not in axis:
        raise ConfigError(f"grid.{axis}: an axis that is not a config key (section.key) needs mapping values")
    return {axis: value}


def run_id(raw: dict[str, Any]) -> str:
    """A stable 10-character id of a complete config mapping (key order does not matter)."""
    blob = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _smoke_overrides(exp: Experiment) -> dict[str, Any]:
    return {**SMOKE_OVERRIDES, **exp.smoke}


def expand_grid(exp: Experiment, smoke: bool = False) -> list[RunSpec]:
    """Every combination of the axes (in file order, the last axis varying fastest); one in smoke mode.

    Used in chapter 10.
    """
    axes = [[(axis, v) for v in (values[:1] if smoke else values)] for axis, values in exp.grid.items()]
    runs, seen = [], set()
    for combo in itertools.product(*axes):
        overrides: dict[str, Any] = {}
        for axis, value in combo:
            overrides.update(_point_overrides(axis, value))
        raw = copy.deepcopy(exp.config)
        for key, value in {**overrides, **(_smoke_overrides(exp) if smoke else {})}.items():
            set_dotted(raw, key, value)
        if smoke and get_dotted(raw, "optim.lr_find") is not None:
            set_dotted(raw, "optim.lr_find.num_iter", SMOKE_LR_FIND_ITERATIONS)
        label = "+".join(str(v["label"]) for _, v in combo if isinstance(v, dict) and "label" in v)
        spec = RunSpec(run_id(raw), overrides, raw, label, {axis: value for axis, value in combo})
        if spec.run_id not in seen:  # two combinations may coincide (e.g. a mapping value repeats a key)
            seen.add(spec.run_id)
            runs.append(spec)
    return runs


def tuned(exp: Experiment, planned: list[RunSpec], rows: list[dict[str, str]]) -> tuple[list[RunSpec], list[RunSpec]]:
    """With ``tune: {axis, seed}``: the runs of the other seeds at each label's best value on validation.

    The tuning seed runs every value of ``axis`` (e.g. three learning rates per optimizer, values with
    the same ``label``); the other seeds run only the value whose tuning-seed run has the best
    ``val_dice_best`` (never a test column), so an optimizer is compared at its own chosen rate at a
    third of the cost of a full grid. Returns the runs to keep, and one stand-in run per (label,
    other seed) still waiting for its label's tuning runs (left out until those rows exist).
    """
    if not exp.tune:
        return planned, []
    axis, seed = exp.tune["axis"], exp.tune["seed"]
    score = {r.get("run_id"): float(r["val_dice_best"]) for r in rows if r.get("val_dice_best") not in (None, "")}
    grid = expand_grid(exp)
    best: dict[str, Any] = {}
    waiting: set[str] = set()
    for label in {spec.label for spec in grid}:
        tuning = [s for s in grid if s.label == label and s.overrides.get("train.seed") == seed]
        if any(s.run_id not in score for s in tuning):
            waiting.add(label)
        elif tuning:
            best[label] = max(tuning, key=lambda s: score[s.run_id]).points[axis]
    keep = [spec for spec in planned if spec.overrides.get("train.seed") == seed
            or (spec.label in best and spec.points[axis] == best[spec.label])]
    later: dict[tuple[str, str], RunSpec] = {}
    for spec in planned:
        if spec.label in waiting and spec.overrides.get("train.seed") != seed:
            later.setdefault((spec.label, json.dumps(spec.overrides.get("train.seed"))), spec)
    return keep, [later[k] for k in sorted(later)]


def check_config(spec: RunSpec) -> Config:
    """Validate a run's config now (names, types, ranges), before any training starts."""
    return load_config(spec.raw)


# ==================================================================================================
# Results table
# ==================================================================================================


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV (empty if it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Coverage:
    """How much of an experiment's planned grid a results table holds (what a chapter says of a growing table).

    ``planned`` are the runs the table should end with (after tuning: each other seed's run at its
    arm's chosen value; one stand-in per arm and seed while the tuning seed's runs are incomplete),
    ``done`` the run ids committed, ``failed`` the rows of ``NAME_failed.csv`` of planned runs.
    """

    name: str
    planned: list[RunSpec]
    done: set[str]
    failed: list[dict[str, str]]
    extra: int  # committed runs that the current grid no longer plans
    waiting: set[str] = field(default_factory=set)  # stand-ins: runs at a value the tuning seed has yet to choose

    @property
    def missing(self) -> list[RunSpec]:
        return [spec for spec in self.planned if spec.run_id not in self.done]

    @property
    def seeds(self) -> list[Any]:
        """The seeds of the committed planned runs."""
        return sorted({spec.overrides.get("train.seed") for spec in self.planned if spec.run_id in self.done},
                      key=str)

    def frame(self) -> pd.DataFrame:
        """One row per planned run: its axis values (``arm`` for labelled axes), ``run_id``, ``done``."""
        rows = [{**{k: v for k, v in spec.overrides.items() if not isinstance(v, dict | list)},
                 **({"arm": spec.label} if spec.label else {}), "run_id": spec.run_id, "done": spec.run_id in self.done}
                for spec in self.planned]
        return pd.DataFrame(rows)

    def text(self, max_points: int = 12) -> str:
        """A few lines: runs committed of planned, seeds, what is still to come, failed runs."""
        have = len(self.planned) - len(self.missing)
        seeds = f" (seed {', '.join(map(str, self.seeds))})" if self.seeds else ""
        lines = [f"{self.name}: {have} of {len(self.planned)} planned runs committed{seeds}"]
        if self.extra:
            lines.append(f"  {self.extra} committed runs are not in the current grid of configs/experiments/"
                         f"{self.name.split('/')[-1]}.yaml")
        varies: dict[str, set[str]] = {}  # per label, the keys that tell its grid points apart (e.g. optim.lr)
        for spec in self.planned:
            if spec.label:
                varies.setdefault(spec.label, set()).update(
                    k for k, v in spec.overrides.items() if k not in _seed_keys(spec) and any(
                        o.label == spec.label and o.overrides.get(k) != v for o in self.planned))
        waiting: dict[str, list[str]] = {}
        for spec in self.missing:
            keys = varies.get(spec.label, set()) if spec.label else set(spec.overrides) - _seed_keys(spec)
            point = ", ".join([spec.label] * bool(spec.label) + [f"{k}={spec.overrides[k]}" for k in spec.overrides
                                                                   if k in keys])
            if spec.run_id in self.waiting:
                point = f"{spec.label}, at the value its tuning-seed runs choose"
            waiting.setdefault(point or "the base config", []).append(str(spec.overrides.get("train.seed", "-")))
        if waiting:
            lines.append(f"  still to come ({len(self.missing)} runs):")
            items = list(waiting.items())
            lines += [f"    {point}: seed {', '.join(seeds)}" for point, seeds in items[:max_points]]
            if len(items) > max_points:
                lines.append(f"    ... and {len(items) - max_points} more grid points")
        if self.failed:
            lines.append(f"  {len(self.failed)} failed runs, reported apart and never averaged in:")
            lines += [f"    {r.get('run_id')} {r.get('config', '')}: {str(r.get('error', ''))[:100]}" for r in self.failed]
        return "\n".join(lines)


def _seed_keys(spec: RunSpec) -> set[str]:
    """The keys the ``train.seed`` axis sets for this run (``train.seed``, and ``data.seed`` where a seed
    carries its own split): they say which seed a run is, not which grid point."""
    if "train.seed" not in spec.points:
        return {"train.seed"}
    return set(_point_overrides("train.seed", spec.points["train.seed"]))


def coverage(name: str, preset: str = "cpu", results: str | os.PathLike | None = None) -> Coverage | None:
    """What the results table of experiment ``name`` holds of its planned grid; None without the
    experiment file (a course copy outside the repository).

    ``results`` defaults to the preset's table (``book/results/cpu/NAME.csv``).

    Used in chapters 3-7, 9 and 10.
    """
    try:
        exp = load_experiment(name, preset)
    except FileNotFoundError:
        return None
    path = Path(results) if results is not None else exp.results
    rows = read_rows(path)
    grid = expand_grid(exp)
    keep, later = tuned(exp, grid, rows)
    planned = keep + later
    ids = {spec.run_id for spec in planned}
    done = {r.get("run_id", "") for r in rows}
    failed = [r for r in read_rows(failed_path(path)) if r.get("run_id") in ids and r.get("run_id") not in done]
    return Coverage(f"{exp.preset}/{exp.name}" if exp.preset else exp.name, planned, done, failed,
                    len(done - ids - {s.run_id for s in grid}), {s.run_id for s in later})


def _locked(path: Path) -> AbstractContextManager[None]:
    """An exclusive lock next to ``path``, waited for, so that shards of one sweep can share a results table."""
    return exclusive_lock(path.with_name(f".{path.name}.lock"), f"results table {path}", wait=True)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add one row to a results CSV atomically (write a temporary file, then rename it over the old one).

    The read-modify-write happens under a file lock, so several processes (``--shard``) can append to
    the same table.
    """
    with _locked(path):
        _append_row(path, row)


def _append_row(path: Path, row: dict[str, Any]) -> None:
    rows = read_rows(path)
    if any(r.get("run_id") == row.get("run_id") for r in rows):
        return  # the same sweep started twice: the first process to finish the run wrote its row
    rows = [*rows, {k: _csv_value(v) for k, v in row.items()}]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = [c for c in COLUMNS if c in keys]
    per_class = [k for k in keys if k.startswith("test_dice_")]  # in class order
    tail = [c for c in TAIL_COLUMNS if c in keys]
    columns = head + per_class + tail + [k for k in keys if k not in (*head, *per_class, *tail)]
    write_csv(path, rows, columns)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def _weights_label(raw: dict[str, Any]) -> str:
    """What the ``weights`` column says: scratch, imagenet, a source dataset, or a file name."""
    source, weights = get_dotted(raw, "model.source"), get_dotted(raw, "model.weights", "imagenet")
    if source is not None:  # "acdc", or "acdc+decoder" when the source's decoder was loaded too
        return str(source) + ("+decoder" if get_dotted(raw, "model.transfer", "auto") == "auto" else "")
    if weights is None:
        return "scratch"
    return str(weights) if weights == "imagenet" else Path(weights).stem


# ==================================================================================================
# Running
# ==================================================================================================


@dataclass
class ExperimentReport:
    """What :func:`run_experiment` did."""

    experiment: str
    results: Path
    planned: list[RunSpec]
    done: list[str] = field(default_factory=list)  # run ids trained (or finished) and written now
    skipped: list[str] = field(default_factory=list)  # run ids already in the table
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error
    run_root: Path | None = None
    dry_run: bool = False

    def summary(self) -> str:
        if self.dry_run:
            return (f"experiment {self.experiment}: {len(self.planned)} runs, {len(self.skipped)} already in "
                    f"{self.results}, {len(self.planned) - len(self.skipped)} to run (dry run: nothing trained)")
        return (f"experiment {self.experiment}: {len(self.planned)} runs, {len(self.done)} run now, "
                f"{len(self.skipped)} already in {self.results}, {len(self.failed)} failed")


def _status(run_dir: Path) -> str:
    """``completed``, ``partial`` (a resumable last.pt) or ``new``."""
    info = run_dir / "run.json"
    if info.is_file() and json.loads(info.read_text()).get("status") == "completed" and (run_dir / "best.pt").is_file():
        return "completed"
    return "partial" if (run_dir / "last.pt").is_file() else "new"


def _train_once(cfg: Config, run_dir: Path, progress: bool | None) -> None:
    """Train ``cfg`` into ``run_dir`` unless it already finished there; resume a run cut short."""
    from .train import train

    status = _status(run_dir)
    if status != "completed":
        train(cfg, run_dir, resume=status == "partial", progress=progress)


def source_raw(exp: Experiment, name: str, smoke: bool = False) -> dict[str, Any]:
    """The config mapping of source run ``name``: its sections merged onto the experiment's config."""
    if name not in exp.sources:
        raise ConfigError(f"model.source: {name!r} but the experiment has no sources.{name} "
                          f"(sources: {', '.join(exp.sources) or 'none'})")
    raw = deep_merge(exp.config, exp.sources[name])
    set_dotted(raw, "model.source", None)  # a source starts from the experiment's own weights
    for key, value in (SMOKE_OVERRIDES if smoke else {}).items():  # not exp.smoke: that is for the grid's runs
        set_dotted(raw, key, value)
    return raw


def _source_checkpoint(exp: Experiment, name: str, smoke: bool, root: Path, progress: bool | None,
                       say: Callable[[str], None]) -> Path:
    """Train (once) the source run ``name`` and return its best checkpoint."""
    raw = source_raw(exp, name, smoke)
    run_dir = root / "sources" / f"{name}-{run_id(raw)}"
    if _status(run_dir) != "completed":
        say(f"source {name}: training into {run_dir}")
    _train_once(load_config(raw), run_dir, progress)
    return run_dir / "best.pt"


def _run_config(exp: Experiment, spec: RunSpec, smoke: bool, root: Path, progress: bool | None,
                say: Callable[[str], None]) -> Config:
    """The run's Config, with ``model.weights`` set to its source's checkpoint when it names one."""
    raw = copy.deepcopy(spec.raw)
    source = get_dotted(raw, "model.source")
    if source is not None:
        set_dotted(raw, "model.weights", str(_source_checkpoint(exp, source, smoke, root, progress, say)))
    return load_config(raw)


def evaluate_test(run_dir: Path, cfg: Config) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``best.pt`` on the run's test volumes: all slices, native grid, 3-D Dice and HD95 in mm.

    Returns the results-row columns (mean foreground Dice per patient, per class, HD95, how it was
    scored) and one row per test patient and class for the ``NAME_patients.csv`` table that the
    paired statistics read. NaN and no patient rows when the split has no test patients.
    """
    from .data.splits import load_split
    from .evaluate import evaluate

    test = load_split(run_dir / "split.json").test
    scored = {"eval_slices": "all", "eval_grid": "native"}
    if not test:
        return {"n_test_patients": 0, "test_dice": math.nan, **scored}, []
    scores = evaluate(run_dir / "best.pt", cfg, "test", device=cfg.train.device, hd95=True)
    summary, per_patient = scores.attrs["summary"], scores.attrs["per_patient"]
    classes = summary[summary["class"] != "mean"]
    columns = {"n_test_patients": len(test), "test_dice": float(scores.attrs["mean_dice"]),
               **{f"test_dice_{r['class_name']}": float(r["dice_mean"]) for _, r in classes.iterrows()},
               "test_hd95": float(summary.iloc[-1]["hd95_mean"]),
               "eval_slices": scores.attrs["eval_slices"], "eval_grid": scores.attrs["eval_grid"]}
    patients = [{"patient_id": r["patient_id"], "class_name": r["class_name"], "dice": r["dice"], "hd95": r["hd95"]}
                for _, r in per_patient.iterrows()]
    return columns, patients


def _row(exp: Experiment, spec: RunSpec, cfg: Config, run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The results-table row of a finished run, and its per-patient test scores."""
    info = json.loads((run_dir / "run.json").read_text())
    started = time.perf_counter()
    test, patients = evaluate_test(run_dir, cfg)
    test_seconds = time.perf_counter() - started  # inference and scoring (Dice, HD95) of every test volume
    row = {
        "experiment": exp.name, "run_id": spec.run_id, "preset": exp.preset or "", "arm": spec.label,
        "dataset": cfg.data.dataset, "strategy": cfg.strategy.name,
        "encoder": "none" if cfg.model.arch == "monai_unet" else cfg.model.encoder,  # MONAI's U-Net has none
        "weights": _weights_label(spec.raw),
        "label_fraction": cfg.data.label_fraction, "n_train_patients": info.get("train_patients"),
        "seed": cfg.train.seed, "loss": cfg.loss.name, "loss_mode": cfg.loss.mode, "optimizer": cfg.optim.name,
        "lr": info.get("lr", cfg.optim.lr), "split": cfg.data.split_mode, **test,
        "val_dice_best": info.get("best_score"), "best_epoch": info.get("best_epoch"),
        "epochs": info.get("epochs_run"), "stopped_early": info.get("stopped_early"),
        "n_params": info.get("parameters", {}).get("total"), "test_seconds": test_seconds, "wall_time_s": info.get("wall_time_s"), "hardware": hardware_label(info.get("hardware", {})),
        "commit": info.get("git_commit", "unknown"), "package_version": info.get("package_version", __version__),
        "config": _config_text(spec),
    }
    return row, [{"run_id": spec.run_id, **p} for p in patients]


# time: seconds of the epoch, its validation included
CURVE_COLUMNS = ("epoch", "step", "train_loss", "lr", "val_dice", "time")
PATIENT_COLUMNS = ("run_id", "patient_id", "class_name", "dice", "hd95")


def patients_path(results: Path) -> Path:
    """Where the per-patient test scores of a results table go: ``NAME.csv`` -> ``NAME_patients.csv``."""
    return results.with_name(f"{results.stem}_patients.csv")


def append_patient_rows(results: Path, rows: list[dict[str, Any]]) -> None:
    """Add a run's per-patient test scores to ``NAME_patients.csv`` (locked, atomic, once per run)."""
    if not rows:
        return
    out = patients_path(results)
    with _locked(out):
        old = [r for r in read_rows(out) if r.get("run_id") != rows[0]["run_id"]]
        write_csv(out, [*old, *({k: _csv_value(v) for k, v in r.items()} for r in rows)], PATIENT_COLUMNS)


def _config_text(spec: RunSpec) -> str:
    """The ``config`` column: what distinguishes the run, as compact sorted JSON."""
    return json.dumps(spec.overrides, sort_keys=True, separators=(",", ":"), default=str)


def failed_path(results: Path) -> Path:
    """Where the runs that failed are listed: ``NAME.csv`` -> ``NAME_failed.csv``."""
    return results.with_name(f"{results.stem}_failed.csv")


def record_failure(results: Path, spec: RunSpec, error: str | None) -> None:
    """List a failed run (with its error) in ``NAME_failed.csv``, or strike it when it has now finished.

    Failed runs are reported apart from the results table, never averaged into it.
    """
    out = failed_path(results)
    if error is None and not out.is_file():
        return
    with _locked(out):
        rows = [r for r in read_rows(out) if r.get("run_id") != spec.run_id]
        if error is not None:
            rows.append({"run_id": spec.run_id, "arm": spec.label, "error": error, "commit": git_commit(),
                         "config": _config_text(spec)})
        write_csv(out, rows, ["run_id", "arm", "error", "commit", "config"])


def curves_path(results: Path) -> Path:
    """Where the per-epoch curves of a results table go: ``NAME.csv`` -> ``NAME_curves.csv``."""
    return results.with_name(f"{results.stem}_curves.csv")


def write_curves(results: Path, run_root: Path) -> Path | None:
    """Collect the per-epoch log (``metrics.csv``) of every run in ``results`` into one small table.

    One row per (run, epoch) with :data:`CURVE_COLUMNS`; join it to the results table on
    ``run_id`` for the run's settings. Runs whose folder is gone (another machine) keep the rows
    the curves table already had. Returns the path, or None when there is nothing to write.
    """
    out = curves_path(results)
    kept = {r["run_id"]: [] for r in read_rows(results)}
    for row in read_rows(out):
        if row.get("run_id") in kept:
            kept[row["run_id"]].append(row)
    for run_id in kept:
        log = run_root / run_id / "metrics.csv"
        if log.is_file():
            kept[run_id] = [{"run_id": run_id, **{c: r.get(c, "") for c in CURVE_COLUMNS}} for r in read_rows(log)]
    rows = [row for run_rows in kept.values() for row in run_rows]
    if not rows:
        return None
    with _locked(out):
        write_csv(out, rows, ["run_id", *CURVE_COLUMNS])
    return out


def run_experiment(
    name: str | os.PathLike | Experiment,
    preset: str | None = None,
    *,
    smoke: bool = False,
    results: str | os.PathLike | None = None,
    run_root: str | os.PathLike | None = None,
    dry_run: bool = False,
    keep_going: bool | None = None,
    progress: bool | None = None,
    shard: tuple[int, int] = (0, 1),
    where: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
    rerun_stale: bool = False,
    allow_mixed_commits: bool = False,
) -> ExperimentReport:
    """Run every grid point of an experiment that is not yet in its results table.

    A table comes from one commit: rows (and finished run folders) made at another commit than the
    code running now are refused, unless ``rerun_stale`` (their rows are deleted and the runs are
    trained again here) or ``allow_mixed_commits`` (kept as they are; the ``commit`` column says so).

    Args:
        name: an experiment name, a YAML path, or a loaded :class:`Experiment`.
        preset: ``cpu`` or ``gpu`` (default: ``gpu`` when CUDA is available).
        smoke: one combination, two steps, 32 px, in a temporary folder (unless ``results`` is given).
        results: the CSV to write (default: the preset's ``results``).
        run_root: folder of the run folders (default ``<cache>/experiments/<name>/<preset>``).
        dry_run: only validate every config and report which runs are done and which are pending.
        keep_going: record a failed run and go on (default: yes, except in smoke mode).
        shard: ``(k, n)`` runs only the grid points whose 0-based index is ``k`` modulo ``n``; ``n``
            processes with ``k = 0 .. n-1`` share one sweep (and its results table) without overlap.
        where: only the grid points whose overrides have these values, e.g. ``{"train.seed": 0}``
            (run every experiment's first seed before any second one).
    """
    exp = name if isinstance(name, Experiment) else load_experiment(name, preset)
    scratch = Path(tempfile.mkdtemp(prefix=f"medseg-smoke-{exp.name}-")) if smoke and not dry_run else None
    if results is None:
        results = scratch / "results.csv" if scratch else exp.results
    if results is None:
        raise ConfigError(f"{exp.path.name}: no results path for preset {exp.preset!r}; pass --results")
    results = Path(results)
    root = Path(run_root) if run_root else (scratch / "runs" if scratch else
                                            cache_dir() / "experiments" / exp.name / (exp.preset or "default"))
    keep_going = (not smoke) if keep_going is None else keep_going

    planned = select_runs(exp, smoke, shard, where)
    if not dry_run:
        _check_writable(results)  # found now, not after the first hours of training
    report = ExperimentReport(exp.name, results, planned, run_root=root, dry_run=dry_run)
    if not allow_mixed_commits:
        try:
            _one_commit(results, root, planned, rerun_stale and not dry_run, say)
        except ConfigError as err:
            if not dry_run:
                raise
            say(f"note: {err}")  # a dry run reports what a real one would refuse
    rows = read_rows(results)
    planned, later = tuned(exp, planned, rows)
    report.planned = planned
    say(compute_plan(exp, planned, rows, later))
    finished = {r.get("run_id") for r in rows}
    for i, spec in enumerate(planned, 1):
        label = f"[{i}/{len(planned)}] {spec.run_id} {json.dumps(spec.overrides, default=str)}"
        if spec.run_id in finished:
            report.skipped.append(spec.run_id)
            if dry_run:
                say(f"{label}: done")
            continue
        run_dir = root / spec.run_id
        if dry_run:
            say(f"{label}: {'pending' if _status(run_dir) == 'new' else 'started, will resume'}")
            continue
        say(label)
        started = time.perf_counter()
        try:
            _run_and_record(exp, spec, smoke, root, results, progress, say)
        except Exception as exc:
            if not keep_going:
                raise
            report.failed[spec.run_id] = f"{type(exc).__name__}: {exc}"
            record_failure(results, spec, report.failed[spec.run_id])
            say(f"{label}: FAILED {report.failed[spec.run_id]}")
            continue
        report.done.append(spec.run_id)
        say(f"{label}: done in {time.perf_counter() - started:.0f}s -> {results}")
    if not dry_run and results.is_file():
        write_curves(results, root)
    return report


def select_runs(exp: Experiment, smoke: bool, shard: tuple[int, int] = (0, 1),
                where: dict[str, Any] | None = None) -> list[RunSpec]:
    """The grid points of one shard that match ``where``, every config validated (a typo fails now,
    not hours into the sweep), the source runs' configs included."""
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise ConfigError(f"shard {k}/{n}: expected K/N with 0 <= K < N")
    planned = expand_grid(exp, smoke)
    for key, value in (where or {}).items():
        if not any(key in spec.overrides for spec in planned):
            raise ConfigError(f"{exp.path.name}: --where {key}: not an axis of the grid")
        planned = [spec for spec in planned if spec.overrides.get(key) == value]
    planned = planned[k::n]
    for spec in planned:
        check_config(spec)
    for source in sorted({get_dotted(spec.raw, "model.source") for spec in planned} - {None}):
        load_config(source_raw(exp, source, smoke))
    return planned


def _run_and_record(exp: Experiment, spec: RunSpec, smoke: bool, root: Path, results: Path, progress: bool | None,
                    say: Callable[[str], None]) -> None:
    """Train one grid point (or resume it), score it on the test split and write its rows and curves."""
    cfg = _run_config(exp, spec, smoke, root, progress, say)
    run_dir = root / spec.run_id
    _train_once(cfg, run_dir, progress)
    row, patients = _row(exp, spec, cfg, run_dir)
    append_patient_rows(results, patients)
    append_row(results, row)
    write_curves(results, root)  # after every run: a table committed mid-sweep has its curves
    record_failure(results, spec, None)


def _one_commit(results: Path, root: Path, planned: list[RunSpec], rerun: bool, say: Callable[[str], None]) -> None:
    """Refuse (or with ``rerun`` remove) table rows and finished run folders from another commit."""
    now = git_commit()
    stale_rows = [r for r in read_rows(results) if r.get("commit") != now]
    stale_runs = [spec.run_id for spec in planned if _status(root / spec.run_id) == "completed"
                  and json.loads((root / spec.run_id / "run.json").read_text()).get("git_commit") != now]
    if not stale_rows and not stale_runs:
        return
    commits = sorted({r.get("commit", "") for r in stale_rows})
    if not rerun:
        raise ConfigError(f"{results}: {len(stale_rows)} rows and {len(stale_runs)} finished runs come from other "
                          f"commits than {now} ({', '.join(c[:12] for c in commits) or 'run folders only'}); a table "
                          "comes from one commit: pass --rerun-stale to redo them here, or --allow-mixed-commits")
    ids = {r.get("run_id") for r in stale_rows} | set(stale_runs)
    for table in (results, patients_path(results)):
        with _locked(table):
            rows = read_rows(table)
            if rows:
                write_csv(table, [r for r in rows if r.get("run_id") not in ids], list(rows[0]))
    for run_id in ids:
        if (root / run_id).is_dir():
            shutil.rmtree(root / run_id)
    say(f"{results}: {len(ids)} runs from other commits removed; they run again at {now}")


def _check_writable(results: Path) -> None:
    """Create (and remove) a file beside ``results``; a ConfigError naming the path if that fails."""
    try:
        results.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(results.with_name(f".{results.name}.probe")):
            pass
        results.with_name(f".{results.name}.probe").unlink(missing_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write the results table {results}: {err.strerror or err}") from None
