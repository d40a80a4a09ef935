"""Experiment grids: every shipped experiment runs in smoke mode, and an interrupted sweep resumes.

The smoke runs use the real datasets (tiny 32 px slices, two steps); the resume, source and LR-finder
tests use the offline phantom. Each test runs torch on one thread: on a CPU shared with other jobs,
two threads that wait for each other can be ten times slower.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from medseg_tutorial.config import ConfigError
from medseg_tutorial.experiment import (
    _run_cap,
    append_row,
    check_config,
    compute_plan,
    curves_path,
    expand_grid,
    list_experiments,
    load_experiment,
    read_rows,
    run_experiment,
    run_id,
    tuned,
)
from medseg_tutorial.results import load_curves

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))
SIX = {"data_efficiency", "source_transfer", "leakage", "losses", "optimizers", "activation"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quiet(_: str) -> None:
    pass


# --- the shipped experiment files -------------------------------------------------------------------


def test_the_six_experiments_are_shipped_with_cpu_and_gpu_presets() -> None:
    assert SIX <= set(list_experiments())
    for path in EXPERIMENTS:
        cpu, gpu = load_experiment(path, "cpu"), load_experiment(path, "gpu")
        assert gpu.results == REPO / "book" / "results" / "gpu" / f"{path.stem}.csv"
        if cpu.budget:  # the converged presets: a measured compute plan, tables in book/results/cpu/
            assert cpu.results == REPO / "book" / "results" / "cpu" / f"{path.stem}.csv"
            assert {"step_seconds", "cpu_hours"} <= set(cpu.budget), path.name
            assert "Compute plan (cpu preset" in path.read_text(), f"{path.name}: explain the plan"
        else:  # the short presets of the first round, until they are re-run
            assert cpu.results == REPO / "book" / "results" / f"{path.stem}.csv"
            assert "Cost (cpu preset)" in path.read_text(), f"{path.name}: state the CPU cost estimate"


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_every_run_of_every_shipped_grid_is_a_valid_config(preset: str) -> None:
    for path in EXPERIMENTS:  # a typo in one arm fails here, not hours into a campaign
        for spec in expand_grid(load_experiment(path, preset)):
            check_config(spec)


def test_grids_have_the_promised_shape() -> None:
    def values(name: str, axis: str) -> list:
        return load_experiment(name, "cpu").grid[axis]

    assert len(expand_grid(load_experiment("data_efficiency", "cpu"))) == 4 * 5 * 3
    assert sorted(values("data_efficiency", "data.label_fraction")) == [0.05, 0.1, 0.25, 1.0]
    assert {"model.weights": None, "strategy.name": "scratch"} in values("data_efficiency", "strategy.name")
    assert values("source_transfer", "init") == [{"model.source": "covid_ct"}, {"model.source": "acdc"},
                                                 {"model.source": "lgg"},
                                                 {"model.source": "acdc", "model.transfer": "auto"},
                                                 {"model.weights": "imagenet"}, {"model.weights": None}]
    assert load_experiment("source_transfer", "cpu").config["model"]["transfer"] == "encoder"
    losses = values("losses", "loss.name")
    assert losses[:4] == ["bce", "dice", "dice_bce", "focal"]
    tversky = losses[4]["loss.params"]  # alpha = beta = 0.5 would be Dice again
    assert losses[4]["loss.name"] == "tversky" and tversky["beta"] > tversky["alpha"]
    arms = values("optimizers", "arm")
    assert arms[0]["optim.lr_find"]["num_iter"] == 50  # the LR-finder arm first (what --smoke runs)
    per_arm = {a["label"]: sorted(x["optim.lr"] for x in arms if x["label"] == a["label"] and "optim.lr" in x)
               for a in arms}
    assert all(len(per_arm[name]) == 3 for name in ("sgd", "adam", "adamw"))  # an LR grid per arm
    nnunet = next(a for a in arms if a["label"] == "sgd-nnunet")
    assert (nnunet["optim.lr"], nnunet["optim.momentum"], nnunet["optim.params"], nnunet["optim.scheduler"]) == \
        (0.01, 0.99, {"nesterov": True}, "poly")
    labels = {spec.label for spec in expand_grid(load_experiment("optimizers", "cpu"))}
    assert labels == {"adamw-lr-finder", "sgd", "sgd-nnunet", "adam", "adamw"}  # RMSprop dropped (see the file)
    assert {v["loss.mode"] for v in values("activation", "head")} == {"multiclass", "multilabel", "region"}
    for name in SIX:  # a seed may carry its own patient split (losses: 14 patients)
        assert [v["train.seed"] if isinstance(v, dict) else v for v in values(name, "train.seed")] == [0, 1, 2]
    assert all(v["data.seed"] == v["train.seed"] for v in values("losses", "train.seed"))
    assert load_experiment("optimizers", "cpu").tune == {"axis": "arm", "seed": 0}


@pytest.mark.parametrize(
    "path",
    EXPERIMENTS,
    ids=lambda p: p.stem,
)
def test_every_experiment_runs_in_smoke_mode(path: Path, shared_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    report = run_experiment(path, "cpu", smoke=True, results=results, run_root=tmp_path / "runs",
                            progress=False, say=_quiet)
    rows = read_rows(results)
    assert len(rows) == len(report.done) == 1 and not report.failed
    row = rows[0]
    assert row["experiment"] == path.stem and row["run_id"] == report.planned[0].run_id
    assert 0.0 <= float(row["test_dice"]) <= 1.0
    assert float(row["n_test_patients"]) > 0 and float(row["epochs"]) == 1
    assert any(k.startswith("test_dice_") for k in row)
    for column in ("dataset", "strategy", "encoder", "weights", "label_fraction", "n_train_patients", "seed",
                   "loss", "optimizer", "split", "val_dice_best", "best_epoch", "wall_time_s", "hardware",
                   "commit", "package_version", "config"):
        assert row[column] != "", column
    # chapter 10's table: the model's size and the cost of scoring the test volumes
    assert int(row["n_params"]) > 1000 and float(row["test_seconds"]) > 0
    curves = read_rows(results.with_name("results_curves.csv"))
    assert curves and all(float(c["time"]) > 0 for c in curves)  # seconds per epoch, validation included


# --- grids, run ids and the results table ------------------------------------------------------------


def _write_experiment(folder: Path, **extra) -> Path:
    spec = {
        "name": "tiny",
        "config": {
            "data": {"dataset": "phantom", "size": [32, 32], "augment": "none"},
            "model": {"encoder": "resnet18", "weights": None,
                      "smp_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
            "train": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 4, "device": "cpu", "amp": "off"},
            "output": {"tensorboard": False},
        },
        "grid": {"train.seed": [0, 1]},
        "presets": {"cpu": {"results": str(folder / "results.csv")}},
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_expand_grid_combines_axes_and_mapping_values(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path, grid={
        "train.seed": [0, 1],
        "strategy.name": [{"strategy.name": "scratch", "model.weights": None}, "full_finetune"],
    })
    exp = load_experiment(path, "cpu")
    runs = expand_grid(exp)
    assert [r.overrides for r in runs] == [
        {"train.seed": 0, "strategy.name": "scratch", "model.weights": None},
        {"train.seed": 0, "strategy.name": "full_finetune"},
        {"train.seed": 1, "strategy.name": "scratch", "model.weights": None},
        {"train.seed": 1, "strategy.name": "full_finetune"},
    ]
    assert len({r.run_id for r in runs}) == 4
    assert runs[0].raw["strategy"]["name"] == "scratch" and runs[0].raw["train"]["seed"] == 0
    (smoke,) = expand_grid(exp, smoke=True)  # the first value of every axis, on 32 px
    assert smoke.overrides == runs[0].overrides and smoke.raw["train"]["max_steps_per_epoch"] == 2


def test_shards_split_a_sweep_without_overlap(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path, grid={"train.seed": [0, 1, 2], "loss.name": ["dice", "ce"]})
    every = [spec.run_id for spec in expand_grid(load_experiment(path, "cpu"))]
    shards = [run_experiment(path, "cpu", dry_run=True, shard=(k, 3), say=_quiet).planned for k in range(3)]
    ids = [spec.run_id for shard in shards for spec in shard]
    assert sorted(ids) == sorted(every) and [len(s) for s in shards] == [2, 2, 2]
    seed1 = run_experiment(path, "cpu", dry_run=True, where={"train.seed": 1}, shard=(1, 2), say=_quiet).planned
    assert [spec.overrides for spec in seed1] == [{"train.seed": 1, "loss.name": "ce"}]
    with pytest.raises(ConfigError, match="not an axis"):
        run_experiment(path, "cpu", dry_run=True, where={"train.epochs": 1}, say=_quiet)
    with pytest.raises(ConfigError, match="shard 2/2"):
        run_experiment(path, "cpu", dry_run=True, shard=(2, 2), say=_quiet)


def test_run_id_is_stable_and_depends_on_every_value() -> None:
    a = {"train": {"seed": 0, "epochs": 2}, "data": {"dataset": "phantom"}}
    b = {"data": {"dataset": "phantom"}, "train": {"epochs": 2, "seed": 0}}
    assert run_id(a) == run_id(b) and len(run_id(a)) == 10
    assert run_id(a) != run_id({**a, "train": {"seed": 1, "epochs": 2}})


def test_bad_experiment_files_fail_before_training(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path)
    with pytest.raises(ConfigError, match="no preset 'gpu'"):
        load_experiment(path, "gpu")
    path = _write_experiment(tmp_path, grid={"train.seed": [0], "loss.name": ["dicee"]})
    with pytest.raises(ConfigError, match=r"loss\.name"):
        run_experiment(path, "cpu", dry_run=True, say=_quiet)
    path = _write_experiment(tmp_path, grid={"head": ["ce"]})
    with pytest.raises(ConfigError, match="needs mapping values"):
        expand_grid(load_experiment(path, "cpu"))


def test_append_row_is_atomic_and_keeps_every_column(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.csv"
    append_row(path, {"experiment": "x", "run_id": "a", "test_dice": 0.5, "test_dice_organ": 0.25})
    append_row(path, {"experiment": "x", "run_id": "b", "test_dice": float("nan"), "extra": 1})
    rows = read_rows(path)
    assert [r["run_id"] for r in rows] == ["a", "b"]
    assert rows[0]["extra"] == "" and rows[1]["test_dice"] == "" and rows[0]["test_dice_organ"] == "0.25"
    assert [p for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path]  # no temporary file


def _append_many(path: str, tag: str, count: int) -> None:
    for i in range(count):
        append_row(Path(path), {"experiment": "x", "run_id": f"{tag}{i}", "test_dice": i / count})


def test_processes_appending_to_one_table_lose_no_rows(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "results.csv"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), tag, 25)) for tag in "ab"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert sorted(r["run_id"] for r in read_rows(path)) == sorted(f"{t}{i}" for t in "ab" for i in range(25))


# --- running: resume, sources, LR finder -------------------------------------------------------------


def test_a_rerun_skips_finished_rows_and_redoes_a_deleted_one(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path)
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    first = run_experiment(path, "cpu", run_root=runs, progress=False, say=_quiet)
    assert len(first.done) == 2 and len(read_rows(results)) == 2

    again = run_experiment(path, "cpu", run_root=runs, progress=False, say=_quiet)
    assert again.done == [] and sorted(again.skipped) == sorted(first.done)

    rows = read_rows(results)
    results.unlink()
    append_row(results, rows[0])  # the second row is lost
    third = run_experiment(path, "cpu", run_root=runs, progress=False, say=_quiet)
    assert third.done == [rows[1]["run_id"]] and third.skipped == [rows[0]["run_id"]]
    assert sorted(r["run_id"] for r in read_rows(results)) == sorted(first.done)

    # one curve row per (run, epoch), joined to the runs' settings by results.load_curves
    curves = read_rows(curves_path(results))
    assert sorted({r["run_id"] for r in curves}) == sorted(first.done) and len(curves) == 2  # 1 epoch each
    assert all(float(r["train_loss"]) > 0 for r in curves)
    joined = load_curves("results", folder=tmp_path)
    assert sorted(joined["seed"]) == [0, 1] and joined["epoch"].tolist() == [0, 0]

    listed = []
    dry = run_experiment(path, "cpu", run_root=runs, dry_run=True, say=listed.append)
    runs_listed = [line for line in listed if line.startswith("[")]
    assert dry.done == [] and len(dry.skipped) == 2 and all(line.endswith(": done") for line in runs_listed)
    assert listed[0].startswith("compute plan for tiny (cpu): 2 runs, 2 done, 0 to run")


def test_the_compute_plan_bounds_the_pending_runs_from_the_measured_step_time(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path)
    exp = load_experiment(path, "cpu")
    planned = expand_grid(exp)
    assert "no budget.step_seconds" in compute_plan(exp, planned, [])
    exp.budget = {"step_seconds": 0.5, "eval_seconds": 10, "test_seconds": 20, "cpu_hours": 1}
    steps, vals = _run_cap(planned[0].raw)
    plan = compute_plan(exp, planned, [])
    bound = 2 * (steps * 0.5 + vals * 10 + 20) / 3600
    assert f"upper bound {bound:.1f} CPU-hours" in plan and "budget of this experiment: 1 CPU-hours" in plan
    done = [{"run_id": planned[0].run_id, "wall_time_s": "7200"}]
    assert "about 2.0 CPU-hours still to go" in compute_plan(exp, planned, done)  # 1 pending x 7200 s
    with pytest.raises(ConfigError, match="budget: unknown keys"):
        load_experiment(_write_experiment(tmp_path / "bad", budget={"step_secs": 1}), "cpu")


def test_the_estimate_prices_pending_runs_by_their_own_cap_calibrated_on_finished_runs(tmp_path: Path) -> None:
    # a long cell (100 steps) finished first at twice its bound: the short cell (10 steps) still to run
    # is priced at twice ITS bound, not at the long run's wall time
    path = _write_experiment(tmp_path, grid={"train.max_steps_per_epoch": [100, 10]})
    exp = load_experiment(path, "cpu")
    exp.budget = {"step_seconds": 36.0}
    long_run, short_run = expand_grid(exp)
    assert _run_cap(long_run.raw)[0] == 100 and _run_cap(short_run.raw)[0] == 10
    plan = compute_plan(exp, [long_run, short_run], [{"run_id": long_run.run_id, "wall_time_s": "7200"}])
    assert "upper bound 0.1 CPU-hours" in plan  # 10 steps x 36 s
    assert "took 2.00 x their bound" in plan and "about 0.2 CPU-hours still to go" in plan
    assert "re-measure them" in plan  # the budget's step time is below what this machine did
    quick = compute_plan(exp, [long_run, short_run], [{"run_id": long_run.run_id, "wall_time_s": "1800"}])
    assert "took 0.50 x their bound" in quick and "re-measure" not in quick


def test_tuning_runs_later_seeds_only_at_each_arms_value_chosen_on_validation(tmp_path: Path) -> None:
    arms = [{"label": "a", "optim.lr": 1e-3}, {"label": "a", "optim.lr": 1e-2}, {"label": "b", "optim.name": "sgd"}]
    path = _write_experiment(tmp_path, grid={"train.seed": [0, 1, 2], "arm": arms}, tune={"axis": "arm", "seed": 0})
    exp = load_experiment(path, "cpu")
    grid = expand_grid(exp)
    assert len(grid) == 9
    seed0 = {(s.label, s.overrides.get("optim.lr")): s.run_id for s in grid if s.points["train.seed"] == 0}
    keep, waiting = tuned(exp, grid, [])
    assert [s.points["train.seed"] for s in keep] == [0, 0, 0]
    assert [(s.label, s.points["train.seed"]) for s in waiting] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert "7 runs, 0 done, 7 to run (4 of them after the tuning seed)" in compute_plan(exp, keep, [], waiting)
    # the larger LR wins on validation (its test score is worse: test never decides)
    rows = [{"run_id": seed0[("a", 1e-3)], "val_dice_best": "0.70", "test_dice": "0.9"},
            {"run_id": seed0[("a", 1e-2)], "val_dice_best": "0.80", "test_dice": "0.1"}]
    keep, waiting = tuned(exp, grid, rows)
    assert [s.label for s in waiting] == ["b", "b"]
    assert {(s.label, s.overrides.get("optim.lr"), s.points["train.seed"]) for s in keep if s.points["train.seed"]} \
        == {("a", 1e-2, 1), ("a", 1e-2, 2)}
    rows.append({"run_id": seed0[("b", None)], "val_dice_best": "0.5"})
    keep, waiting = tuned(exp, grid, rows)
    assert len(keep) == 3 + 2 * 2 and waiting == []
    with pytest.raises(ConfigError, match="tune: expected"):
        load_experiment(_write_experiment(tmp_path / "bad", tune={"axis": "nope", "seed": 0}), "cpu")


def test_source_weights_and_lr_finder(tmp_path: Path) -> None:
    path = _write_experiment(
        tmp_path,
        grid={"train.seed": [0], "model.source": ["other_seed"],
              "optim.lr_find": [{"optim.lr_find": {"num_iter": 5, "start_lr": 1e-5, "end_lr": 1e-1}}]},
        sources={"other_seed": {"data": {"seed": 3}}},
    )
    report = run_experiment(path, "cpu", run_root=tmp_path / "runs", progress=False, say=_quiet)
    (row,) = read_rows(tmp_path / "results.csv")
    assert row["weights"] == "other_seed+decoder"  # transfer: auto (the default) loads the decoder too
    (source_dir,) = (tmp_path / "runs" / "sources").iterdir()
    assert (source_dir / "best.pt").is_file()
    lr = float(row["lr"])
    assert 1e-5 <= lr <= 1e-1 and math.isfinite(lr)
    run_dir = tmp_path / "runs" / report.done[0]
    assert (run_dir / "lr_find.json").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["weights"] == str(source_dir / "best.pt")


def test_smoke_mode_writes_to_a_temporary_folder(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path)
    report = run_experiment(path, "cpu", smoke=True, progress=False, say=_quiet)
    assert len(report.planned) == 1 and report.results != tmp_path / "results.csv"
    assert report.results.is_file() and not (tmp_path / "results.csv").exists()
    assert report.results.parent.name.startswith("medseg-smoke-tiny-")
    assert report.run_root == report.results.parent / "runs"  # not the shared cache of real runs
    shutil.rmtree(report.results.parent)


def test_a_run_cut_short_is_resumed_not_restarted(tmp_path: Path) -> None:
    from medseg_tutorial.config import load_config
    from medseg_tutorial.train import train

    path = _write_experiment(tmp_path, grid={"train.seed": [0]})
    exp = load_experiment(path, "cpu")
    exp.config["train"]["epochs"] = 2
    (spec,) = expand_grid(exp)
    run_dir = tmp_path / "runs" / spec.run_id
    train(load_config(spec.raw, ["train.epochs=1"]), run_dir, progress=False)
    # what a sweep killed after epoch 0 leaves behind: last.pt, and run.json still "running"
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "running"}))

    report = run_experiment(exp, run_root=tmp_path / "runs", progress=False, say=_quiet)
    assert report.done == [spec.run_id]
    (row,) = read_rows(tmp_path / "results.csv")
    assert row["epochs"] == "2"
    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["resumes"]) == 1 and info["status"] == "completed"


def test_rows_record_how_they_were_scored_and_per_patient_scores(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path, grid={"train.seed": [0]})
    report = run_experiment(path, "cpu", run_root=tmp_path / "runs", progress=False, say=_quiet)
    (row,) = read_rows(tmp_path / "results.csv")
    assert (row["eval_slices"], row["eval_grid"]) == ("all", "native")
    assert math.isfinite(float(row["test_hd95"])) or row["test_hd95"] == "inf"
    patients = read_rows(tmp_path / "results_patients.csv")
    assert {p["run_id"] for p in patients} == set(report.done)
    assert len(patients) == int(row["n_test_patients"]) * 2  # two foreground classes
    mean = sum(float(p["dice"]) for p in patients if p["dice"]) / sum(1 for p in patients if p["dice"])
    assert mean == pytest.approx(float(row["test_dice"]), abs=0.02)  # macro over classes vs pooled: close


def test_a_table_is_never_mixed_from_two_commits(tmp_path: Path) -> None:
    path = _write_experiment(tmp_path)
    runs = tmp_path / "runs"
    run_experiment(path, "cpu", run_root=runs, progress=False, say=_quiet, where={"train.seed": 0})
    rows = read_rows(tmp_path / "results.csv")
    rows[0]["commit"] = "0" * 40  # as if that row had been made by an older commit
    append_row(tmp_path / "other.csv", rows[0])
    (tmp_path / "other.csv").replace(tmp_path / "results.csv")
    with pytest.raises(ConfigError, match="come from other commits"):
        run_experiment(path, "cpu", run_root=runs, progress=False, say=_quiet)
    assert len(read_rows(tmp_path / "results.csv")) == 1  # nothing was touched
    mixed = run_experiment(path, "cpu", run_root=runs, progress=False, say=_quiet, allow_mixed_commits=True)
    mixed_commits = {r["commit"] for r in read_rows(tmp_path / "results.csv")}
    assert len(mixed.done) == 1 and len(mixed_commits) == 2 and "0" * 40 in mixed_commits  # old row kept, new added
    redone = run_experiment(path, "cpu", run_root=runs, progress=False, say=_quiet, rerun_stale=True)
    assert len(redone.done) == 1  # the stale seed-0 row, trained again
    commits = {r["commit"] for r in read_rows(tmp_path / "results.csv")}
    assert len(commits) == 1 and "0" * 40 not in commits


def test_a_failed_run_is_listed_apart_and_struck_off_when_it_succeeds(tmp_path: Path, monkeypatch) -> None:
    import medseg_tutorial.experiment as experiment

    path = _write_experiment(tmp_path)
    results = tmp_path / "results.csv"
    real = experiment._train_once
    first_seed = expand_grid(load_experiment(path, "cpu"))[0].run_id

    def flaky(cfg, run_dir, progress):
        if run_dir.name == first_seed:
            raise FloatingPointError("loss is NaN at step 3")
        real(cfg, run_dir, progress)

    monkeypatch.setattr(experiment, "_train_once", flaky)
    report = run_experiment(path, "cpu", run_root=tmp_path / "runs", progress=False, say=_quiet)
    assert list(report.failed) == [first_seed] and len(read_rows(results)) == 1  # not in the table
    (failed,) = read_rows(experiment.failed_path(results))
    assert failed["run_id"] == first_seed and "loss is NaN" in failed["error"] and failed["commit"]
    monkeypatch.setattr(experiment, "_train_once", real)
    again = run_experiment(path, "cpu", run_root=tmp_path / "runs", progress=False, say=_quiet)
    assert again.done == [first_seed] and read_rows(experiment.failed_path(results)) == []


def test_coverage_counts_planned_done_failed_and_tuning_stand_ins(tmp_path):
    from medseg_tutorial.experiment import coverage, expand_grid, load_experiment

    exp = load_experiment("data_efficiency", "cpu")
    grid = expand_grid(exp)
    table = tmp_path / "data_efficiency.csv"
    pd.DataFrame({"run_id": [grid[0].run_id, grid[1].run_id, "gone"], "val_dice_best": [0.8, 0.8, 0.8]}).to_csv(
        table, index=False)
    pd.DataFrame({"run_id": [grid[2].run_id], "arm": [""], "error": ["RuntimeError: boom"],
                  "config": ["{}"]}).to_csv(tmp_path / "data_efficiency_failed.csv", index=False)
    c = coverage("data_efficiency", results=table)
    assert len(c.planned) == 60 and len(c.missing) == 58 and c.seeds == [0] and c.extra == 1
    assert [r["run_id"] for r in c.failed] == [grid[2].run_id]
    text = c.text(max_points=2)
    assert text.startswith("cpu/data_efficiency: 2 of 60 planned runs committed (seed 0)")
    assert "RuntimeError: boom" in text and "more grid points" in text
    assert c.frame()["done"].sum() == 2
    # optimizers: until seed 0 has run every rate, each other seed waits as one stand-in per arm
    opt = coverage("optimizers", results=tmp_path / "optimizers.csv")
    assert len(opt.planned) == 21 and len(opt.waiting) == 10
    assert "at the value its tuning-seed runs choose" in opt.text(max_points=100)
    assert coverage("no_such_experiment") is None
