"""The ``medseg`` command line, called in-process through ``cli.main`` (no subprocess start-up cost)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg_tutorial.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
PHANTOM = str(REPO / "configs" / "phantom.yaml")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared CPU, two threads that wait for each other are much slower
    yield
    torch.set_num_threads(threads)


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("data", "train", "evaluate", "predict", "experiment", "bench", "course"):
        assert name in COMMANDS and name in out


# --- medseg data ----------------------------------------------------------------------------------


def test_data_list_shows_licences_and_local_paths(shared_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--root", str(shared_root)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("msd_hippocampus"))
    assert "present: yes" in line and str(shared_root / "msd" / "Task04_Hippocampus") in line
    assert "CC BY-SA 4.0" in out and "CC BY-NC-SA 4.0" in out
    assert "generated (no download)" in out  # the phantom


def test_data_list_of_an_empty_root_says_where_each_dataset_belongs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"missing (expected at {tmp_path / 'lgg-mri-segmentation' / 'kaggle_3m'})" in out
    assert "medseg data fetch NAME" in out


def test_data_check_and_summary_on_real_data(shared_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "covid_ct", "--root", str(shared_root)]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["data", "summary", "covid_ct", "--root", str(shared_root)]) == 0
    out = capsys.readouterr().out
    assert "patients: 98" in out and "modality: CT" in out


def test_data_fetch_explains_how_to_get_lgg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "fetch", "lgg", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation" in out
    assert "CC BY-NC-SA 4.0" in out
    assert str(tmp_path / "lgg-mri-segmentation" / "kaggle_3m") in out
    assert "medseg data check lgg" in out
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def test_data_fetch_does_not_download_what_is_present(shared_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "fetch", "msd_hippocampus", "--root", str(shared_root)]) == 0
    assert "already present" in capsys.readouterr().out


def test_data_fetch_of_an_unknown_dataset_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "fetch", "hipocampus"]) == 2
    assert "unknown dataset 'hipocampus'" in capsys.readouterr().err


# --- medseg train / evaluate / predict -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--config", PHANTOM, "preset=smoke", "train.epochs=1", "train.max_steps_per_epoch=2",
                 "output.tensorboard=false", "--run-dir", str(run_dir), "--no-progress"])
    assert code == 0
    return run_dir


def test_train_writes_a_run_folder(trained_run: Path) -> None:
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.csv", "run.json", "split.json"):
        assert (trained_run / name).is_file(), name


def test_train_refuses_to_overwrite_a_run(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", PHANTOM, "preset=smoke", "--run-dir", str(trained_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_evaluate_prints_a_table_and_writes_csv_and_overlays(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--run-dir", str(trained_run), "--overlays", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "mean foreground Dice" in out and "organ" in out and "lesion" in out
    with open(trained_run / "eval_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"patient_id", "class_name", "dice"} <= rows[0].keys()
    assert {r["class_name"] for r in rows} == {"organ", "lesion"}
    assert (trained_run / "overlays_test.png").stat().st_size > 0


def test_predict_segments_a_folder_of_images(trained_run: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(images / "slice.png")
    assert main(["predict", "--checkpoint", str(trained_run / "best.pt"), str(images), str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "slice.png"))
    assert labels.shape == (40, 56) and labels.max() <= 2  # the input's grid, the phantom's labels


def test_config_error_exits_2_and_names_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", PHANTOM, "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "train.epoch" in err and "did you mean 'train.epochs'" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--config", PHANTOM, "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err


# --- medseg experiment ------------------------------------------------------------------------------


def test_experiment_dry_run_lists_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "losses.csv"
    assert main(["experiment", "losses", "--preset", "cpu", "--dry-run", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    pending = [line for line in out.splitlines() if line.endswith(": pending")]
    assert len(pending) == 15  # 5 losses x 3 seeds
    assert '"loss.name": "focal"' in out and "15 to run" in out
    assert not results.exists()  # a dry run trains and writes nothing


def test_experiment_list_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "--list"]) == 0
    assert "data_efficiency" in capsys.readouterr().out
    assert main(["experiment", "no_such_experiment"]) == 2
    assert "not found" in capsys.readouterr().err


def test_shown_paths_are_the_readers_not_the_build_machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from medseg_tutorial.paths import shown

    monkeypatch.chdir(tmp_path)
    assert shown(tmp_path / "runs" / "a") == "runs/a"
    monkeypatch.chdir(Path(__file__).parent)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(cache))
    assert shown(cache / "weights" / "w.pt") == "$MEDSEG_CACHE_DIR/weights/w.pt"
    monkeypatch.delenv("MEDSEG_CACHE_DIR")
    run = Path(tempfile.mkdtemp(prefix="medseg-test-"))
    assert shown(run / "best.pt") == f"<tmp>/{run.name}/best.pt"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert shown(tmp_path / "home" / ".cache" / "x") == "~/.cache/x"
    run.rmdir()
