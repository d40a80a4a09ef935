"""The training loop on the synthetic phantom: run folder, strategies, early stopping, faults, precision."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medseg_tutorial import train as trainer_module
from medseg_tutorial.config import ConfigError, load_config
from medseg_tutorial.data.splits import Split, save_split
from medseg_tutorial.device import autocast_dtype, select_device
from medseg_tutorial.distributed import DistInfo
from medseg_tutorial.evaluate import predict
from medseg_tutorial.loaders import batches_per_epoch, build_data
from medseg_tutorial.models import load_checkpoint
from medseg_tutorial.train import NonFiniteLossError, train

SMOKE = ["preset=smoke"]
# a model whose gradient does not depend on how a batch is split: frozen (eval-mode) encoder
# BatchNorm, no decoder normalisation, a per-pixel mean loss, plain SGD
BATCH_INDEPENDENT = [
    "strategy.name=frozen_encoder", "loss.name=ce", "optim.name=sgd", "optim.momentum=0.0",
    "optim.weight_decay=0.0", "optim.lr=0.05", "optim.scheduler=constant", "train.clip_grad=null",
    "model.smp_kwargs={encoder_depth: 3, decoder_channels: [32, 16, 8], decoder_use_norm: identity}",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _cfg(*overrides: str):
    return load_config("phantom", [*SMOKE, *overrides])


def test_run_folder_and_gradual_unfreezing(tmp_path: Path) -> None:
    cfg = _cfg("train.epochs=3", "strategy.name=gradual_unfreezing", "strategy.params.every=1")
    result = train(cfg, tmp_path, progress=False)

    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "run.json", "metrics.csv", "split.json",
                                                    "best.pt", "last.pt"}
    history = pd.read_csv(tmp_path / "metrics.csv", keep_default_na=False)
    assert list(history["epoch"]) == [0, 1, 2]
    assert {"train_loss", "val_dice", "val_dice_organ", "val_dice_lesion", "lr", "time", "unfrozen",
            "trainable", "step"} <= set(history.columns)
    # one encoder stage more each epoch, deepest first, and the trainable count grows with it
    assert list(history["unfrozen"]) == ["", "encoder.stage3", "encoder.stage2"]
    assert history["trainable"].is_monotonic_increasing and history["trainable"].nunique() == 3
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["lr"].iloc[-1] < history["lr"].iloc[0]  # cosine schedule, stepped per batch
    assert list(history["step"]) == [4, 8, 12]

    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "completed" and info["wall_time_s"] > 0 and info["epochs_run"] == 3
    assert info["package_version"] and info["git_commit"]
    assert info["hardware"]["torch"] == torch.__version__ and info["hardware"]["cpu_count"] >= 1
    assert info["train_patients"] == 8 and info["val_patients"] == 2

    assert load_config(tmp_path / "config.yaml") == cfg.resolved()
    assert result.best_score == history["val_dice"].max() and result.epochs_run == 3
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta["provenance"]["epoch"] == result.best_epoch
    assert meta["provenance"]["val_dice"] == pytest.approx(result.best_score)
    assert meta["class_names"] == ["background", "organ", "lesion"]
    assert meta["extra"]["loss_mode"] == "multiclass"


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path, monkeypatch) -> None:
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.9])

    def scripted_validate(*args, **kwargs):
        score = next(scores)
        return score, {"organ": score, "lesion": score}

    monkeypatch.setattr(trainer_module, "validate", scripted_validate)
    result = train(_cfg("train.epochs=10", "train.patience=2", "train.max_steps_per_epoch=1"), tmp_path,
                   progress=False)
    assert result.stopped_early and result.epochs_run == 4  # epochs 2 and 3 did not beat epoch 1
    assert (result.best_epoch, result.best_score) == (1, 0.6)
    assert list(result.history["val_dice"]) == [0.5, 0.6, 0.55, 0.58]
    _, meta = load_checkpoint(tmp_path / "best.pt")
    assert meta["provenance"]["epoch"] == 1


def test_tensorboard_is_used_when_installed(tmp_path: Path, monkeypatch) -> None:
    """A stand-in ``torch.utils.tensorboard`` receives one scalar per metric and epoch."""
    calls = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("init", log_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, step))

        def close(self) -> None:
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(_cfg("train.epochs=2", "train.max_steps_per_epoch=1"), tmp_path, progress=False)
    assert calls[0] == ("init", str(tmp_path / "tensorboard")) and calls[-1] == ("close",)
    assert ("val_dice", 1) in calls and ("train_loss", 0) in calls and ("val_dice_lesion", 0) in calls


def test_augmentation_with_loader_workers_is_reproducible(tmp_path: Path) -> None:
    """Worker processes are seeded from (seed, epoch): two runs augment identically."""
    cfg = _cfg("train.epochs=2", "train.max_steps_per_epoch=2", "train.num_workers=2", "data.augment=medium",
               "train.deterministic=true")
    for name in ("a", "b"):
        train(cfg, tmp_path / name, progress=False)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class _NaNAfter(nn.Module):
    """Wraps a loss; returns NaN from the ``after``-th call on."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.inner(logits, target)
        return loss * float("nan") if self.calls > self.after else loss


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real_build_loss = trainer_module.build_loss
    monkeypatch.setattr(trainer_module, "build_loss", lambda *a, **kw: _NaNAfter(real_build_loss(*a, **kw), 2))
    cfg = _cfg("train.epochs=3", "train.max_steps_per_epoch=2")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, batch 0; the last good checkpoint "
                                                 r"is .*last\.pt \(kept\)"):
        train(cfg, tmp_path, progress=False)
    last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert last["state"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values()
                                               if v.is_floating_point())
    assert json.loads((tmp_path / "run.json").read_text())["status"].startswith("failed: NonFiniteLossError")


def test_gradient_accumulation_equals_the_larger_batch(tmp_path: Path) -> None:
    """Batch 8 in one step == two micro-batches of 4 with accumulate=2 (the loss is divided by 2)."""
    common = [*BATCH_INDEPENDENT, "train.epochs=1", "train.max_steps_per_epoch=2"]
    big = train(_cfg(*common, "train.batch_size=8"), tmp_path / "big", progress=False)
    acc = train(_cfg(*common, "train.batch_size=4", "train.accumulate=2"), tmp_path / "acc", progress=False)
    a = torch.load(tmp_path / "big" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "acc" / "last.pt", weights_only=True)
    assert a["state"]["step"] == b["state"]["step"] == 2
    moved = [k for k in a["model"] if k.startswith("decoder")]
    for key in moved:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    assert acc.history["train_loss"][0] == pytest.approx(big.history["train_loss"][0], rel=1e-5)


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path: Path) -> None:
    cfg = _cfg("train.epochs=1", "train.max_steps_per_epoch=1", "train.amp=bf16", "train.channels_last=true")
    result = train(cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["amp"] == "bfloat16"
    assert np.isfinite(result.history["train_loss"][0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_precision_compile_channels_last(tmp_path: Path) -> None:
    cfg = _cfg("train.device=cuda", "train.amp=auto", "train.channels_last=true", "train.compile=true",
               "train.epochs=2")
    result = train(cfg, tmp_path, progress=False)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["amp"] in ("bfloat16", "float16") and info["hardware"]["device"].startswith("cuda")
    assert np.isfinite(result.history["train_loss"]).all()
    fp16 = train(_cfg("train.device=cuda", "train.amp=fp16", "train.epochs=1"), tmp_path / "fp16", progress=False)
    assert np.isfinite(fp16.history["train_loss"]).all()  # GradScaler path


def test_binary_task_on_real_ct_slices(shared_root: Path, tmp_path: Path) -> None:
    """COVID-19 CT (2 classes): one logit channel, sigmoid decoding, Dice of the foreground class."""
    cfg = load_config("covid_ct", ["preset=quick", f"data.root={shared_root}", "data.size=[32, 32]",
                                   "model.weights=null", "train.epochs=1", "train.max_steps_per_epoch=2"])
    assert (cfg.model.classes, cfg.loss.mode, cfg.loss.name) == (1, "binary", "dice_bce")
    result = train(cfg, tmp_path, progress=False)
    assert "val_dice_infection" in result.history.columns
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta["config"]["classes"] == 1 and meta["class_names"] == ["background", "infection"]
    assert meta["extra"]["loss_mode"] == "binary"


def test_device_and_precision_selection() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("off", cpu) is None
    assert autocast_dtype("auto", cpu) is None  # float32 on CPU unless asked
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        autocast_dtype("fp16", cpu)
    assert select_device("cpu") == cpu
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == cpu
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")


def test_batches_per_epoch() -> None:
    assert batches_per_epoch(10, 1, None) == 10
    assert batches_per_epoch(10, 3, None) == 9  # whole optimizer steps only
    assert batches_per_epoch(10, 2, 2) == 4
    with pytest.raises(ValueError, match="cannot fill one step"):
        batches_per_epoch(2, 4, None)


def test_split_file_and_label_fraction(tmp_path: Path) -> None:
    patients = [f"phantom{k:03d}" for k in range(12)]
    split = Split(train=patients[:8], val=patients[8:10], test=patients[10:], seed=3)
    path = save_split(split, tmp_path / "split.json", dataset="phantom")
    data = build_data(_cfg(f"data.split_file={path}", "data.label_fraction=0.5"), DistInfo())
    train_patients = set(data.table.patient_ids[data.train_rows])
    assert len(train_patients) == 4 and train_patients <= set(patients[:8])
    assert set(data.table.patient_ids[data.val_rows]) == set(patients[8:10])
    missing = Split(train=["nobody"], val=patients[8:10], test=[])
    bad = save_split(missing, tmp_path / "bad.json")
    with pytest.raises(ValueError, match="patients not in dataset 'phantom'"):
        build_data(_cfg(f"data.split_file={bad}"), DistInfo())


def test_predict_returns_label_maps() -> None:
    model = nn.Conv2d(1, 3, 1)
    images = np.random.default_rng(0).normal(size=(5, 1, 16, 16)).astype(np.float32)
    out = predict(model, images, "multiclass", torch.device("cpu"), batch_size=2)
    assert out.shape == (5, 16, 16) and out.dtype == np.uint8 and out.max() <= 2
    binary = predict(nn.Conv2d(1, 1, 1), images, "binary", torch.device("cpu"))
    assert set(np.unique(binary)) <= {0, 1}


def test_slice_split_mode_leaks_patients_but_keeps_test_patients_out() -> None:
    from medseg_tutorial.config import load_config
    from medseg_tutorial.distributed import DistInfo
    from medseg_tutorial.loaders import build_data

    base = ["preset=smoke", "train.device=cpu"]
    honest = build_data(load_config("configs/phantom.yaml", base), DistInfo())
    leaky = build_data(load_config("configs/phantom.yaml", [*base, "data.split_mode=slice"]), DistInfo())
    ids = leaky.table.patient_ids
    # slice mode: validation patients also appear in training; patient mode: never
    assert set(ids[leaky.val_rows]) & set(ids[leaky.train_rows])
    assert not set(ids[honest.val_rows]) & set(ids[honest.train_rows])
    # same number of validation slices, and the test patients stay out of both modes
    assert len(leaky.val_rows) == len(honest.val_rows)
    used = set(ids[np.concatenate([leaky.train_rows, leaky.val_rows])])
    assert not used & set(leaky.split.test)


def test_multilabel_mode_trains_with_one_sigmoid_per_class(tmp_path) -> None:
    from medseg_tutorial.config import load_config
    from medseg_tutorial.train import train

    cfg = load_config("configs/phantom.yaml", ["preset=smoke", "train.device=cpu", "loss.mode=multilabel",
                                               "loss.name=dice_bce", "train.epochs=1"])
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert 0.0 <= result.best_score <= 1.0
    assert set(result.history.columns) >= {"train_loss", "val_dice"}


def test_region_mode_trains_and_validates(tmp_path: Path) -> None:
    """Per-class sigmoids without a background channel, through the trainer and native evaluation."""
    from medseg_tutorial.evaluate import evaluate

    cfg = _cfg("loss.mode=region", "loss.name=dice_bce", "train.epochs=1")
    result = train(cfg, tmp_path, progress=False)
    assert result.history["val_dice"].notna().all()
    scores = evaluate(tmp_path / "best.pt", device="cpu")
    assert set(scores["class_name"]) == {"organ", "lesion"} and scores["dice"].between(0, 1).all()
