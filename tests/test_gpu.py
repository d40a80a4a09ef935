"""What only a CUDA GPU can check: mixed precision, channels_last, torch.compile, device augmentation, NCCL.

Every test here is marked ``gpu`` and skipped without CUDA (``pytest -m gpu`` selects them on a GPU
machine; CI without one collects and skips them). Tolerances:

* bf16 autocast: the loss within 2 % of the float32 loss (bf16 keeps 8 bits of mantissa).
* channels_last and torch.compile: outputs within ``atol = rtol = 1e-3`` of the eager, contiguous
  float32 forward, with TF32 switched off (TF32 alone changes convolutions by about 1e-3).
* device augmentation on CUDA: the statistical checks of ``tests/test_gpu_augment.py`` against the
  albumentations pipeline (a CUDA generator draws other numbers than a CPU one, so outputs cannot
  be compared one to one).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg_tutorial.config import load_config
from medseg_tutorial.distributed import DistInfo
from medseg_tutorial.loaders import build_data
from medseg_tutorial.losses import build_loss
from medseg_tutorial.models import build_model
from medseg_tutorial.tools.gpu_augment import DeviceAugment, DeviceBatchIterator
from medseg_tutorial.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def _load_augment_checks():
    """The statistics helpers of tests/test_gpu_augment.py (whatever pytest's import mode)."""
    spec = importlib.util.spec_from_file_location("_gpu_augment_checks", Path(__file__).with_name("test_gpu_augment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _load_augment_checks()


@pytest.fixture
def no_tf32():
    """Plain float32 matmuls and convolutions, so that layouts and compilers can be compared tightly."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _model_and_batch(device: torch.device = CUDA, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("resnet18", None, in_channels=1, classes=3, arch="unet", encoder_depth=3,
                        decoder_channels=[32, 16, 8]).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 64, 64, generator=g).to(device)
    y = torch.randint(0, 3, (4, 64, 64), generator=g).to(device)
    return model, x, y


def _finite_and_moved(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_bf16_autocast_step_is_finite_and_close_to_fp32(no_tf32):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    model, x, y = _model_and_batch()
    loss_fn = build_loss("dice_ce", "multiclass").to(CUDA)
    model.train()
    with torch.no_grad():
        fp32 = loss_fn(model(x), y).item()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
        loss = loss_fn(logits, y)
    assert logits.dtype == torch.bfloat16
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx(fp32, rel=0.02)
    loss.backward()
    optimizer.step()
    _finite_and_moved(before, model)


def test_fp16_with_grad_scaler_step():
    model, x, y = _model_and_batch()
    loss_fn = build_loss("dice_ce", "multiclass").to(CUDA)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model(x), y)
        assert np.isfinite(loss.item())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    assert np.isfinite(scaler.get_scale()) and scaler.get_scale() > 0
    _finite_and_moved(before, model)


def test_channels_last_forward_equals_contiguous(no_tf32):
    model, x, _ = _model_and_batch()
    model.eval()
    with torch.no_grad():
        reference = model(x)
        nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = nhwc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.float(), reference, atol=1e-3, rtol=1e-3)


def test_compiled_forward_equals_eager(no_tf32):
    model, x, _ = _model_and_batch()
    model.eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        reference = model(x)
        out = compiled(x)
        again = compiled(x)  # the second call runs the cached graph
    torch.testing.assert_close(out, reference, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(again, out)


@pytest.mark.parametrize("strength", ["light", "medium"])
def test_device_augmentation_on_cuda_matches_cpu_pipeline_statistics(strength):
    aug = DeviceAugment((checks.S, checks.S), strength)
    ours = checks.device_samples(aug, device=CUDA)
    checks.assert_equivalent(checks.cpu_samples(strength), ours)
    # same generator seed on the same device: the same output
    image, mask = checks.asymmetric_slice()
    images = torch.from_numpy(image).to(CUDA)[None].repeat(64, 1, 1, 1)
    masks = torch.from_numpy(mask).to(CUDA)[None].repeat(64, 1, 1)
    a = aug(images, masks, torch.Generator(device=CUDA).manual_seed(3))
    b = aug(images, masks, torch.Generator(device=CUDA).manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0, 1} and a[0].is_cuda


def test_training_with_device_augmentation_on_cuda(tmp_path: Path):
    cfg = load_config("phantom", ["preset=smoke", "train.device=cuda", "train.amp=auto", "data.augment=medium",
                                  "data.augment_on=device", "train.epochs=2"])
    data = build_data(cfg, DistInfo(), device=CUDA)
    assert isinstance(data.loader, DeviceBatchIterator) and data.loader.images.is_cuda
    data.start_epoch(0)
    batch = next(iter(data.loader))
    assert batch["image"].is_cuda and batch["mask"].is_cuda and batch["mask"].dtype == torch.int64
    result = train(cfg, tmp_path, progress=False)
    assert np.isfinite(result.history["train_loss"]).all() and np.isfinite(result.history["val_dice"]).all()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


NCCL_SCRIPT = """
import os, torch, torch.distributed as dist
rank = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(rank)
dist.init_process_group("nccl")
t = torch.full((4,), float(rank + 1), device="cuda")
dist.all_reduce(t)
assert dist.get_backend() == "nccl" and torch.equal(t.cpu(), torch.full((4,), 1.0)), t
dist.destroy_process_group()
print("nccl ok")
"""


def test_nccl_all_reduce_under_torchrun(tmp_path: Path):
    script = tmp_path / "nccl_check.py"
    script.write_text(NCCL_SCRIPT)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                          str(script)], env=_env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "nccl ok" in out.stdout, out.stdout + out.stderr


def test_one_gpu_torchrun_training_run_completes(tmp_path: Path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "-m", "medseg_tutorial.cli", "train", str(REPO / "configs" / "phantom.yaml"), "preset=smoke", "train.device=cuda",
         "train.amp=auto", "data.augment_on=device", "data.augment=light", "--run-dir", str(run_dir), "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 1
    assert info["hardware"]["device"].startswith("cuda")
    assert json.loads(out.stdout.strip().splitlines()[-1])["epochs_run"] == 2
