"""Data-parallel training: 2 processes x batch 4 (torchrun, Gloo, CPU) == 1 process x batch 8.

For the comparison to be meaningful the two runs must compute the same gradient per step:

* the same 8 slices per step: DistributedSampler gives rank r positions r, r+2, ... of the
  permutation that the single process takes in order (shared seed and epoch);
* a per-pixel mean loss (cross-entropy), so the mean of two half-batch losses is the full-batch
  loss (Dice is not: it pools counts over the batch);
* nothing that depends on the batch composition: no BatchNorm in train mode (the encoder is frozen,
  so its BatchNorm layers normalise with fixed statistics, and the decoder has no normalisation),
  no augmentation, plain SGD without momentum, no clipping.

What remains is float32 summation order (two partial means averaged by all-reduce versus one
mean), so weights agree to ``rtol=1e-5, atol=1e-6`` and losses to ``rtol=1e-5``; in practice the
differences are around 1e-8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medseg_tutorial.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    init_distributed,
    shard,
    unwrap,
)

REPO = Path(__file__).resolve().parents[1]
COMMON = [
    "preset=smoke", "train.epochs=2", "train.max_steps_per_epoch=2", "strategy.name=frozen_encoder",
    "model.smp_kwargs={encoder_depth: 3, decoder_channels: [32, 16, 8], decoder_use_norm: identity}",
    "loss.name=ce", "optim.name=sgd", "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.lr=0.05",
    "optim.scheduler=constant", "train.clip_grad=null", "data.augment=none",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def _trainer_args(run_dir: Path, batch_size: int) -> list[str]:
    return ["-m", "medseg_tutorial.cli", "train", str(REPO / "configs" / "phantom.yaml"), *COMMON,
            f"train.batch_size={batch_size}", "--run-dir", str(run_dir), "--no-progress"]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tmp_path: Path) -> None:
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.Popen([*torchrun, *_trainer_args(ddp_dir, batch_size=4)], env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.run([sys.executable, *_trainer_args(single_dir, batch_size=8)], env=_env(),
                            capture_output=True, text=True, timeout=180)
    ddp_out, _ = ddp.communicate(timeout=180)
    assert single.returncode == 0, single.stdout + single.stderr
    assert ddp.returncode == 0, ddp_out

    info = json.loads((ddp_dir / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "completed"
    assert ddp_out.count("best validation Dice") == 1, "only rank 0 prints the summary"

    a = torch.load(single_dir / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(ddp_dir / "last.pt", map_location="cpu", weights_only=True)
    assert a["state"]["step"] == b["state"]["step"] == 4
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6, msg=key)

    ma, mb = pd.read_csv(single_dir / "metrics.csv"), pd.read_csv(ddp_dir / "metrics.csv")
    np.testing.assert_allclose(mb["train_loss"], ma["train_loss"], rtol=1e-5)
    assert ma["train_loss"][1] < ma["train_loss"][0], "the model must learn, or equal weights prove nothing"
    np.testing.assert_allclose(mb["val_dice"], ma["val_dice"], atol=1e-6)


# --- the helpers in a single process ------------------------------------------------------------


def test_single_process_helpers_are_no_ops(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed()
    assert info == DistInfo() and not info.enabled and info.is_main
    assert all_gather_objects({"a": 1}, info) == [{"a": 1}]
    assert all_reduce_mean(2.5, info) == 2.5
    np.testing.assert_array_equal(shard(np.arange(5), info), np.arange(5))
    model = torch.nn.Linear(2, 2)
    assert unwrap(model) is model


def test_shard_covers_every_row_once() -> None:
    rows = np.arange(11)
    parts = [shard(rows, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
