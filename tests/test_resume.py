"""Kill a training run with SIGKILL, resume it, and get exactly the run that was never interrupted.

Tolerance: none. On CPU in deterministic mode, with one thread, the resumed run's metrics.csv
(every column but the wall-clock ``time``), best score, best epoch and final weights are
bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from medseg_tutorial import train as trainer_module
from medseg_tutorial.config import load_config
from medseg_tutorial.errors import RunError
from medseg_tutorial.train import train

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
# augmentation on, so that resuming must also reproduce the random flips and affines
OVERRIDES = ["preset=smoke", f"train.epochs={EPOCHS}", "train.max_steps_per_epoch=6", "train.deterministic=true",
             "data.augment=light"]


def _env() -> dict[str, str]:
    # one thread: the same reduction order in every process, and no fight over the 2 CI cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medseg_tutorial.cli", "train", str(REPO / "configs" / "phantom.yaml"),
            *OVERRIDES, "--run-dir", str(run_dir), "--no-progress", *extra]


def _metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=["time"])


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    # The reference and the run to be killed start together (one thread each, two cores).
    reference = subprocess.Popen(_command(ref_dir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    victim = subprocess.Popen(_command(run_dir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "last.pt").exists():  # epoch 0 is done once its checkpoint exists
            assert victim.poll() is None, victim.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.02)
        time.sleep(0.3)  # a few batches into epoch 1
        assert victim.poll() is None, "the run finished before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    killed = _state(run_dir / "last.pt")["state"]
    killed_at = killed["epoch"]
    assert 1 <= killed_at < EPOCHS, "the kill must interrupt the run before its last epoch"
    before_kill = pd.read_csv(run_dir / "metrics.csv")
    assert len(before_kill) == killed_at
    assert killed["seconds"] >= before_kill["time"].sum() > 0  # the checkpoint carries the time spent so far

    resumed = subprocess.run(_command(run_dir, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert reference.wait(timeout=120) == 0, reference.stdout.read().decode()

    pd.testing.assert_frame_equal(_metrics(run_dir), _metrics(ref_dir), check_exact=True)
    ref_last, run_last = _state(ref_dir / "last.pt"), _state(run_dir / "last.pt")
    for key in ("best_score", "best_epoch", "step", "epoch"):
        assert run_last["state"][key] == ref_last["state"][key], key
    _assert_same_weights(run_last["model"], ref_last["model"])
    _assert_same_weights(_state(run_dir / "best.pt")["state_dict"], _state(ref_dir / "best.pt")["state_dict"])
    run_json = (run_dir / "run.json").read_text()
    assert '"status": "completed"' in run_json and '"resumes": [' in run_json
    # the wall time counts the killed call's epochs too (run.json never saw that call finish)
    after_kill = pd.read_csv(run_dir / "metrics.csv")["time"].iloc[killed_at:].sum()
    assert json.loads(run_json)["wall_time_s"] >= killed["seconds"] + after_kill


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path, monkeypatch, one_thread) -> None:
    """``train.checkpoint_every`` writes last.pt mid-epoch; a crash right after it resumes from there."""
    cfg = load_config("phantom", [*OVERRIDES, "train.epochs=2", "train.max_steps_per_epoch=4",
                                  "train.checkpoint_every=3"])
    reference = train(cfg, tmp_path / "reference", progress=False)

    saves = []
    real_save = trainer_module.save_training_state

    def crash_after_first_mid_epoch_save(path, cfg, model, optimizer, scheduler, scaler, state, dist_info, log):
        real_save(path, cfg, model, optimizer, scheduler, scaler, state, dist_info, log)
        saves.append((state.epoch, state.batch))
        if state.batch > 0 and state.epoch == 1:
            raise KeyboardInterrupt  # as if the job were pre-empted right after this checkpoint

    monkeypatch.setattr(trainer_module, "save_training_state", crash_after_first_mid_epoch_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False)
    assert saves[-1] == (1, 2)  # epoch 1, after optimizer step 6 = its 2nd batch
    assert '"status": "failed: KeyboardInterrupt' in (tmp_path / "run" / "run.json").read_text()
    monkeypatch.setattr(trainer_module, "save_training_state", real_save)

    resumed = train(cfg, tmp_path / "run", resume=True, progress=False)
    pd.testing.assert_frame_equal(resumed.history.drop(columns=["time"]), reference.history.drop(columns=["time"]),
                                  check_exact=True)
    assert resumed.best_score == reference.best_score
    _assert_same_weights(_state(tmp_path / "run" / "last.pt")["model"],
                         _state(tmp_path / "reference" / "last.pt")["model"])


def test_resume_refuses_a_changed_config(tmp_path: Path, one_thread) -> None:
    cfg = load_config("phantom", ["preset=smoke", "train.epochs=1", "train.max_steps_per_epoch=1"])
    train(cfg, tmp_path, progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        train(cfg, tmp_path, progress=False)
    changed = load_config("phantom", ["preset=smoke", "train.epochs=1", "train.max_steps_per_epoch=1",
                                      "optim.lr=0.1"])
    with pytest.raises(ValueError, match=r"config changed in optim\.lr"):
        train(changed, tmp_path, resume=True, progress=False)
    # extending a finished run is allowed: it trains the extra epoch only
    longer = load_config("phantom", ["preset=smoke", "train.epochs=2", "train.max_steps_per_epoch=1"])
    result = train(longer, tmp_path, resume=True, progress=False)
    assert result.epochs_run == 2 and list(result.history["epoch"]) == [0, 1]


def test_resume_a_checkpoint_written_before_a_config_key_existed(tmp_path: Path, one_thread) -> None:
    cfg = load_config("phantom", ["preset=smoke", "train.epochs=1", "train.max_steps_per_epoch=1"])
    train(cfg, tmp_path, progress=False)
    state = _state(tmp_path / "last.pt")
    del state["config"]["data"]["split_mode"]  # as written by a version without data.split_mode
    torch.save(state, tmp_path / "last.pt")
    longer = load_config("phantom", ["preset=smoke", "train.epochs=2", "train.max_steps_per_epoch=1"])
    assert train(longer, tmp_path, resume=True, progress=False).epochs_run == 2
    state["config"]["data"]["split_mode"] = "slice"  # a real change is still refused
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"config changed in data\.split_mode"):
        train(longer, tmp_path, resume=True, progress=False)


def test_resume_without_checkpoint_fails_clearly(tmp_path: Path) -> None:
    cfg = load_config("phantom", ["preset=smoke"])
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(cfg, tmp_path, resume=True, progress=False)
