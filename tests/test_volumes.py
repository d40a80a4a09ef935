"""Chapter 10, from slices to volumes: 3-D and 2.5-D training through the one trainer, config and evaluation.

The data are real MSD Hippocampus volumes from the shared data root, but only the first 16 (registered
in this process as ``hippocampus16``), so that a run reads, trains and validates in seconds; the
networks are tiny (a depth-3 encoder, 16 x 32 x 32 patches, two steps per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medseg_tutorial.builders import build_network, build_step
from medseg_tutorial.config import ConfigError, load_config
from medseg_tutorial.data import registry
from medseg_tutorial.data._io import FileLayout, read_nifti_pair
from medseg_tutorial.data.msd import HIPPOCAMPUS, msd_items
from medseg_tutorial.data.prepare import prepare_dataset
from medseg_tutorial.data.preprocess import normalize_case
from medseg_tutorial.data.splits import load_split, patient_split
from medseg_tutorial.data.types import DatasetInfo
from medseg_tutorial.evaluate import Predictor, evaluate, predict_nifti, predict_volume
from medseg_tutorial.experiment import check_config, compute_plan, evaluate_test, expand_grid, load_experiment
from medseg_tutorial.loaders import build_data
from medseg_tutorial.models import load_checkpoint, save_checkpoint
from medseg_tutorial.models.inflate import ACSConv
from medseg_tutorial.strategies import encoder_stages, get_strategy
from medseg_tutorial.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

NAME = "hippocampus16"
TINY = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
BASE = [f"data.dataset={NAME}", "data.fractions=[0.5, 0.25, 0.25]", "model.dims=3", "data.patch=[16, 32, 32]",
        f"model.smp_kwargs={json.dumps(TINY)}", "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=2",
        "train.device=cpu", "train.amp=off", "train.deterministic=true", "output.tensorboard=false",
        "optim.scheduler=constant"]


def _first_16(task_dir: Path) -> list:
    return msd_items(task_dir)[:16]


@pytest.fixture(scope="module")
def hippocampus16(shared_root: Path) -> DatasetInfo:
    """The first 16 Hippocampus volumes as a dataset of their own (8 train, 4 val, 4 test patients)."""
    info = dataclasses.replace(HIPPOCAMPUS, name=NAME, patient_count=16)
    if NAME not in registry.list_datasets():
        registry.register_dataset(info)(FileLayout(_first_16, read_nifti_pair, info.num_classes))
    return info


def _cfg(*extra: str):
    return load_config("configs/hippocampus.yaml", [*BASE, *extra])


@pytest.fixture(scope="module")
def i3d_run(hippocampus16, tmp_path_factory) -> Path:
    """An I3D-inflated ImageNet U-Net trained 1 epoch, then resumed for a second: its run folder."""
    run_dir = tmp_path_factory.mktemp("i3d") / "run"
    first = train(_cfg(), run_dir, progress=False)
    assert first.epochs_run == 1 and (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()
    resumed = train(_cfg("train.epochs=2"), run_dir, resume=True, progress=False)
    assert resumed.epochs_run == 2 and list(resumed.history["epoch"]) == [0, 1]
    assert list(resumed.history["step"]) == [2, 4]  # the resumed epoch continued the count
    return run_dir


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.dims=3"], "data.patch: model.dims 3 trains on patches"),
    (["data.patch=[16, 32, 32]"], "data.patch: a 3-D patch, for model.dims: 3"),
    (["model.dims=4"], "model.dims: must be one of 2, 3"),
    (["model.dims=3", "data.patch=[16, 32, 32]", "data.context=1"], "data.context: 2.5-D stacks slices"),
    (["model.dims=3", "data.patch=[16, 32, 32]", "model.arch=fpn"], "model.arch: in 3-D"),
    (["model.dims=3", "data.patch=[16, 32, 32]", "model.inflate=i2d"], "model.inflate: must be one of 'i3d', 'acs'"),
    (["model.arch=monai_unet", "model.weights=imagenet"], "model.weights: monai_unet is MONAI's U-Net trained from scratch"),
    (["model.params={channels: [8, 16]}"], "model.params: keyword arguments of monai_unet"),
    (["model.dims=3", "data.patch=[16, 40, 32]", "model.arch=monai_unet", "model.weights=null"],
     "data.patch: monai_unet downsamples by strides"),
    (["model.dims=3", "data.patch=[16, 32, 32]", "model.arch=monai_unet", "model.weights=null",
      "strategy.name=frozen_encoder"], "strategy.name: 'frozen_encoder' acts on the stages of a pretrained encoder"),
])
def test_3d_and_25d_keys_are_checked_when_the_config_loads(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config("configs/phantom.yaml", overrides)


def test_25d_takes_three_channels_into_the_imagenet_first_conv_as_pretrained() -> None:
    cfg = load_config("configs/phantom.yaml", ["data.context=1", "model.encoder=efficientnet-lite0", "model.weights=imagenet"])
    assert cfg.model.in_channels == 3  # one grey channel x (2 x 1 + 1) slices
    model, _ = build_network(cfg, torch.device("cpu"))
    from medseg_tutorial.models.build import encoder_spec
    from medseg_tutorial.models.weights import IMAGENET_SOURCES

    spec = encoder_spec(cfg.model.encoder)
    state = IMAGENET_SOURCES[spec.imagenet_source](spec.smp_name, model.encoder)
    key = next(k for k in state if k.endswith("conv_stem.weight"))
    assert torch.equal(model.encoder.state_dict()[key], state[key])  # RGB filters as they are: no adaptation


# --- data ----------------------------------------------------------------------------------------


def test_25d_channel_j_is_the_neighbouring_slice_of_the_same_volume(hippocampus16, tmp_path: Path) -> None:
    table = prepare_dataset(NAME, size=(64, 64), resize_mode="pad", context=1, cache_dir=tmp_path, progress=False)
    assert table.images.shape[1] == 3
    case = next(registry.iter_cases(NAME))
    raw = normalize_case(case, HIPPOCAMPUS).image[:, 0]  # (S, H, W), z-scored as the table is
    rows = table.rows_for([case.patient_id])
    (s, h, w), top, left = raw.shape, (64 - raw.shape[1]) // 2, (64 - raw.shape[2]) // 2
    assert len(rows) == s
    for row, index in zip(rows, table.slice_index[rows]):
        for j in range(3):  # channel j: slice index + j - 1, the edge slice repeated past either end
            expected = raw[min(max(index + j - 1, 0), s - 1)]
            np.testing.assert_allclose(table.images[row, j, top:top + h, left:left + w], expected, atol=1e-2)
    # 2-D and 3-D runs on the same data.seed hold out the same patients
    volumes = build_data(_cfg()).table
    assert patient_split(volumes.patient_ids, (0.5, 0.25, 0.25)).test == patient_split(table, (0.5, 0.25, 0.25)).test


def test_3d_batches_are_random_patches_repeated_exactly_per_epoch(hippocampus16) -> None:
    data = build_data(_cfg("data.augment=light"))
    assert len(data.table) == 16 and len(data.train_rows) == 8 and len(data.val_rows) == 4
    assert data.table.images[0].shape[0] == 1 and data.table.images[0].ndim == 4  # (C, S, H, W), native grid
    data.start_epoch(3)
    first = next(iter(data.loader))
    assert first["image"].shape == (2, 1, 16, 32, 32) and first["mask"].shape == (2, 16, 32, 32)
    assert first["mask"].dtype == torch.long and set(first["mask"].unique().tolist()) <= {0, 1, 2}
    data.start_epoch(3)  # the same epoch again: the same patches (what resuming relies on)
    again = next(iter(data.loader))
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    data.start_epoch(4)
    assert not torch.equal(first["image"], next(iter(data.loader))["image"])


class _SignNet(nn.Module):
    """Two-class logits (-x, x): the labels are exactly ``x > 0``, wherever the window is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2:] == (16, 32, 32)  # always whole windows
        return torch.cat([-x, x], dim=1)


@pytest.mark.parametrize("shape", [(30, 50, 37), (12, 20, 40)])  # larger than the window, and partly smaller
def test_the_sliding_window_covers_every_voxel_of_the_volume(shape) -> None:
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    labels = predict_volume(_SignNet(), image, "multiclass", torch.device("cpu"), roi=(16, 32, 32), batch_size=3)
    assert labels.shape == shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, (image[0] > 0).astype(np.uint8))


# --- models and strategies -----------------------------------------------------------------------


@pytest.mark.parametrize("model_keys", [
    ["model.inflate=i3d"],
    ["model.inflate=acs", "model.weights=null"],
    ["model.arch=monai_unet", "model.weights=null", "model.smp_kwargs={}",
     "model.params={channels: [4, 8, 16], strides: [2, 2], num_res_units: 1}"],
])
def test_a_3d_checkpoint_loads_back_into_the_same_model(hippocampus16, model_keys, tmp_path: Path) -> None:
    cfg = _cfg(*model_keys)
    model, _ = build_network(cfg, torch.device("cpu"))
    with torch.no_grad():  # not the initial values: the loaded weights must be these
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "m.pt", model, class_names=HIPPOCAMPUS.class_names,
                           normalization=((0.0,), (1.0,)), provenance={})
    loaded, meta = load_checkpoint(path)
    assert meta["config"]["dims"] == 3 and loaded.medseg_config == model.medseg_config
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_frozen_encoder_on_an_inflated_model_leaves_the_encoder_unchanged(hippocampus16) -> None:
    cfg = _cfg("strategy.name=frozen_encoder", "train.deterministic=false")
    model, plan = build_network(cfg, torch.device("cpu"))
    names = [g.name for g in encoder_stages(model)]
    assert names == ["encoder.stage1", "encoder.stage2", "encoder.stage3"]  # traced with a 5-D dummy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from medseg_tutorial.builders import build_optimizer

    step = build_step(cfg, model, build_optimizer(cfg, plan), None, None)
    model.train()
    plan.train_mode(model)
    step(torch.randn(2, 1, 16, 32, 32), torch.randint(0, 3, (2, 16, 32, 32)))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("encoder.") for k in changed)  # BatchNorm statistics too
    assert any(k.startswith("decoder.") for k in changed)
    discriminative = get_strategy("discriminative_lr", decay=0.5).apply(build_network(cfg, torch.device("cpu"))[0])
    assert sorted({scale for name, scale in discriminative.lr_scales.items() if name.startswith("encoder.stage")}) \
        == [0.125, 0.25, 0.5]
    acs, _ = build_network(_cfg("model.inflate=acs"), torch.device("cpu"))
    assert any(isinstance(m, ACSConv) for m in acs.modules()) and len(encoder_stages(acs)) == 3


# --- training, evaluation, prediction ------------------------------------------------------------


def test_a_3d_run_trains_validates_writes_best_and_resumes(i3d_run: Path) -> None:
    history = pd.read_csv(i3d_run / "metrics.csv")
    assert len(history) == 2 and history["val_dice"].between(0, 1).all()
    assert {"val_dice_anterior", "val_dice_posterior"} <= set(history.columns)
    info = json.loads((i3d_run / "run.json").read_text())
    assert info["status"] == "completed" and info["train_volumes"] == 8 and info["val_volumes"] == 4
    assert load_checkpoint(i3d_run / "best.pt")[1]["config"]["inflate"] == "i3d"


@pytest.mark.parametrize("overrides", [
    ["model.arch=monai_unet", "model.weights=null", "model.smp_kwargs={}", "strategy.name=scratch",
     "model.params={channels: [4, 8, 16], strides: [2, 2], num_res_units: 1}"],
    ["model.inflate=acs", "strategy.name=discriminative_lr"],
    ["model.dims=2", "data.patch=null", "data.context=1", "data.size=[32, 32]"],  # 2.5-D: a 2-D model, 3 channels
], ids=["monai_unet", "acs", "2.5d"])
def test_every_variant_trains_and_validates_through_the_same_loop(hippocampus16, overrides, tmp_path: Path) -> None:
    result = train(_cfg(*overrides, "train.deterministic=false"), tmp_path / "run", progress=False)
    assert result.best_checkpoint.is_file() and 0 <= result.best_score <= 1
    scores = evaluate(result.best_checkpoint, None, "test", device="cpu", hd95=False)
    assert scores.attrs["eval_grid"] == "native" and len(scores.attrs["per_patient"]) == 2 * 4


@pytest.mark.parametrize(("mode", "channels"), [("binary", 1), ("multiclass", 3), ("region", 2)])
def test_losses_take_volumes_as_they_take_images(mode: str, channels: int) -> None:
    from medseg_tutorial.losses import build_loss, losses_for_mode

    torch.manual_seed(0)
    logits, labels = torch.randn(2, channels, 4, 6, 5), torch.randint(0, 2 if mode == "binary" else 3, (2, 4, 6, 5))
    for name in losses_for_mode("multilabel" if mode == "region" else mode):
        loss = build_loss(name, mode, classes=channels)
        # the same voxels laid out as (N, C, D * H, W) images: every loss flattens the spatial axes
        torch.testing.assert_close(loss(logits, labels), loss(logits.reshape(2, channels, 24, 5), labels.reshape(2, 24, 5)))


def test_resuming_a_3d_run_repeats_the_uninterrupted_run(i3d_run: Path, tmp_path: Path) -> None:
    train(_cfg("train.epochs=2"), tmp_path / "straight", progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "straight" / "metrics.csv").drop(columns=["time"]),
                                  pd.read_csv(i3d_run / "metrics.csv").drop(columns=["time"]))
    straight, resumed = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (tmp_path / "straight", i3d_run))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # the same patches, the same weights


def test_a_3d_checkpoint_is_scored_per_patient_on_the_native_volumes(i3d_run: Path, tmp_path: Path) -> None:
    scores = evaluate(i3d_run / "best.pt", None, "test", device="cpu")
    test = load_split(i3d_run / "split.json").test
    per_patient = scores.attrs["per_patient"]
    assert sorted(per_patient["patient_id"].unique()) == sorted(test) and len(test) == 4
    assert scores.attrs["eval_slices"] == "all" and scores.attrs["eval_grid"] == "native"
    assert {"dice", "hd95", "voxels"} <= set(scores.columns) and 0 <= scores.attrs["mean_dice"] <= 1
    predictor = Predictor.load(i3d_run / "best.pt", "cpu")
    case = next(c for c in registry.iter_cases(NAME) if c.patient_id == test[0])
    assert predictor(case.image).shape == case.mask.shape  # the volume's own voxels
    with pytest.raises(ValueError, match="grid='native'"):
        evaluate(i3d_run / "best.pt", None, "test", device="cpu", grid="prepared")
    # the experiment runner's scoring, and a NIfTI volume in, a label volume of the same grid out
    columns, patients = evaluate_test(i3d_run, load_config(i3d_run / "config.yaml"))
    assert columns["eval_grid"] == "native" and len(patients) == 2 * 4 and not math.isnan(columns["test_hd95"])
    nifti = Path(case.source)
    out = predict_nifti(i3d_run / "best.pt", nifti, tmp_path / "labels.nii.gz", device="cpu")
    assert nib.load(out).shape == nib.load(nifti).shape


# --- the experiment file ------------------------------------------------------------------------


def test_the_volumes_experiment_validates_and_fits_its_budget() -> None:
    exp = load_experiment("volumes", "cpu")
    runs = expand_grid(exp)
    assert len(runs) == 5 * 3 and {r.label for r in runs} == {"2d", "2.5d", "3d-i3d-imagenet", "3d-i3d-scratch",
                                                              "3d-monai"}
    for spec in runs:
        check_config(spec)
    two_d = next(r for r in runs if r.label == "2d").raw
    efficiency = load_experiment("data_efficiency", "cpu").config
    for section, key in (("data", "size"), ("data", "keep_empty"), ("optim", "scheduler"), ("data", "fractions")):
        assert two_d[section][key] == efficiency[section][key], key
    bound = float(compute_plan(exp, runs, []).split("upper bound ")[1].split(" CPU-hours")[0])
    assert bound <= exp.budget["cpu_hours"]
    smoke = expand_grid(exp, smoke=True)
    assert len(smoke) == 1 and smoke[0].label == "3d-i3d-imagenet" and smoke[0].raw["data"]["patch"] == [16, 32, 32]
