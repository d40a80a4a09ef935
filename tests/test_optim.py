"""Optimizers, LR schedules and the LR range test, on tiny models."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from torch import nn

from medseg_tutorial.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    LRFinderResult,
    build_optimizer,
    build_scheduler,
    lr_range_test,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: on a shared CPU, extra intra-op threads cost far more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(8, 2, 1)
    )


def _loader(n_batches: int = 4, size: int = 16) -> list[dict[str, torch.Tensor]]:
    """Synthetic segmentation: the mask is 'pixel brighter than 0'."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        image = torch.randn(4, 1, size, size, generator=g)
        batches.append({"image": image, "mask": (image[:, 0] > 0).long()})
    return batches


def _two_groups(model: nn.Module) -> list[dict]:
    first, *rest = model.parameters()
    return [{"name": "a", "params": [first], "lr_scale": 0.1},
            {"name": "b", "params": rest, "lr": 0.5}]


def _lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in optimizer.param_groups]


# --------------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_builds_and_steps(name: str) -> None:
    model = _tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(name, model.parameters(), lr=1e-2, weight_decay=1e-4)
    batch = _loader(1)[0]
    nn.functional.cross_entropy(model(batch["image"]), batch["mask"]).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert opt.defaults["weight_decay"] == 1e-4
    assert not opt.defaults.get("fused")  # auto: no fused kernels for CPU tensors


def test_optimizer_hyperparameters_reach_torch() -> None:
    sgd = build_optimizer("sgd", _tiny_net().parameters(), lr=0.1, momentum=0.8, nesterov=True)
    assert (type(sgd), sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (torch.optim.SGD, 0.8, True)
    adamw = build_optimizer("adamw", _tiny_net().parameters(), lr=0.1, betas=(0.8, 0.9))
    assert (type(adamw), adamw.defaults["betas"]) == (torch.optim.AdamW, (0.8, 0.9))
    with pytest.raises(KeyError, match="adamw"):
        build_optimizer("lamb", _tiny_net().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="fused"):
        build_optimizer("rmsprop", _tiny_net().parameters(), lr=0.1, fused=True)


def test_per_group_lrs_are_respected() -> None:
    opt = build_optimizer("adamw", _two_groups(_tiny_net()), lr=1e-2)
    assert _lrs(opt) == [pytest.approx(1e-3), 0.5]  # lr_scale multiplies, explicit lr wins
    assert [g["name"] for g in opt.param_groups] == ["a", "b"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_is_chosen_on_cuda() -> None:
    model = _tiny_net().cuda()
    assert build_optimizer("adamw", model.parameters(), lr=1e-3).defaults["fused"] is True
    assert not build_optimizer("rmsprop", model.parameters(), lr=1e-3).defaults.get("fused")


# --------------------------------------------------------------------------------------------------
# schedulers
# --------------------------------------------------------------------------------------------------


def _run(name: str, steps: int, **kw) -> tuple[list[list[float]], torch.optim.Optimizer]:
    """LR of every group at each of ``steps`` optimizer steps."""
    opt = build_optimizer("sgd", _two_groups(_tiny_net()), lr=1.0)
    sched = build_scheduler(name, opt, epochs=1, steps_per_epoch=steps, **kw)
    history = []
    for _ in range(steps):
        history.append(_lrs(opt))
        opt.step()
        sched.step()
    return history, opt


def test_intervals() -> None:
    opt = build_optimizer("sgd", _tiny_net().parameters(), lr=1.0)
    intervals = {n: build_scheduler(n, opt, epochs=2, steps_per_epoch=5).medseg_interval for n in SCHEDULERS}
    assert intervals == {"constant": "step", "cosine": "step", "onecycle": "step", "poly": "step",
                         "plateau": "epoch"}


def test_cosine_with_warmup_known_values() -> None:
    history, _ = _run("cosine", steps=110, warmup_steps=10, min_lr_ratio=0.01)
    b = [h[1] for h in history]  # group "b": lr 0.5
    assert b[0] == pytest.approx(0.5 / 10)  # first warm-up step
    assert b[9] == pytest.approx(0.5)  # warm-up done
    assert b[10] == pytest.approx(0.5)  # cosine starts at the top
    assert b[60] == pytest.approx(0.5 * (0.01 + 0.99 * 0.5))  # half way down
    assert b[-1] == pytest.approx(0.5 * 0.01, rel=0.05)  # ends near the floor
    assert all(x >= y for x, y in pairwise(b[9:]))  # monotone after warm-up
    assert all(h[0] / h[1] == pytest.approx(0.1 / 0.5) for h in history)  # group ratio preserved


def test_constant_with_warmup() -> None:
    history, _ = _run("constant", steps=20, warmup_steps=4)
    assert [h[1] for h in history[:5]] == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5])
    assert all(h[1] == pytest.approx(0.5) for h in history[4:])


def test_onecycle_peaks_at_each_groups_lr() -> None:
    history, _ = _run("onecycle", steps=100, min_lr_ratio=0.01)
    for g, lr in enumerate([0.1, 0.5]):
        lrs = [h[g] for h in history]
        assert max(lrs) == pytest.approx(lr)
        assert lrs.index(max(lrs)) == pytest.approx(30, abs=1)  # default pct_start 0.3
        assert lrs[0] == pytest.approx(lr / 25)
        assert lrs[-1] == pytest.approx(lr * 0.01, rel=0.05)


def test_onecycle_warmup_steps_set_the_peak() -> None:
    history, _ = _run("onecycle", steps=100, warmup_steps=10)
    lrs = [h[1] for h in history]
    assert lrs.index(max(lrs)) == pytest.approx(10, abs=1)


def test_plateau_reduces_after_patience() -> None:
    opt = build_optimizer("sgd", _two_groups(_tiny_net()), lr=1.0)
    sched = build_scheduler("plateau", opt, epochs=10, steps_per_epoch=1, patience=2, factor=0.5)
    for dice in [0.5, 0.6, 0.6, 0.6]:  # best at epoch 1, then 2 epochs without improvement
        sched.step(dice)
    assert _lrs(opt) == pytest.approx([0.1, 0.5])  # patience not yet exceeded
    sched.step(0.6)
    assert _lrs(opt) == pytest.approx([0.05, 0.25])
    for _ in range(50):
        sched.step(0.0)
    assert _lrs(opt) == pytest.approx([0.1 * 0.01, 0.5 * 0.01])  # never below min_lr_ratio


# --------------------------------------------------------------------------------------------------
# LR range test
# --------------------------------------------------------------------------------------------------


def test_lr_range_test_sweeps_and_restores() -> None:
    model = _tiny_net()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    result = lr_range_test(model, _loader(), nn.functional.cross_entropy, num_iter=30, end_lr=10)
    assert isinstance(result, LRFinderResult)
    assert all(b > a for a, b in pairwise(result.lrs))
    assert result.lrs[0] == pytest.approx(1e-6)
    assert all(math.isfinite(x) for x in result.losses + result.smoothed)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) >= 5
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert result.lrs[0] <= result.lr_at_min <= result.lrs[-1]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm buffers
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_lr_range_test_stops_on_divergence() -> None:
    result = lr_range_test(_tiny_net(), _loader(), nn.functional.cross_entropy,
                           optimizer_name="sgd", start_lr=1e-3, end_lr=1e6, num_iter=60)
    assert len(result.lrs) < 60  # stopped early, before reaching end_lr
    assert all(math.isfinite(x) for x in result.losses)


def test_lr_range_test_suggestions() -> None:
    result = lr_range_test(_tiny_net(), _loader(), nn.functional.cross_entropy, num_iter=30,
                           suggest="min/10")
    assert result.suggestion == pytest.approx(max(result.lr_at_min / 10, result.lrs[0]))
    with pytest.raises(KeyError):
        lr_range_test(_tiny_net(), _loader(), nn.functional.cross_entropy, suggest="magic")


def test_lr_range_test_plot() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    result = LRFinderResult([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0], [1.0, 0.7, 1.1], 1e-3)
    ax = result.plot()
    assert ax.get_xscale() == "log"
    assert len(ax.get_lines()) == 3


def test_lr_range_test_with_a_multilabel_loss_and_label_maps() -> None:
    """The range test trains through the trainer's TrainStep and loss factory: label maps reach a
    per-class sigmoid loss through the label-map adapter (this failed with a reshape error before)."""
    from medseg_tutorial.builders import build_loss, build_network, input_normalizer
    from medseg_tutorial.config import load_config
    from medseg_tutorial.loaders import build_data

    torch.manual_seed(0)
    cfg = load_config("phantom", ["preset=smoke", "loss.mode=multilabel", "loss.name=dice_bce", "train.batch_size=4",
                                  "optim.lr_find={num_iter: 6}"])
    assert cfg.model.classes == 3  # one sigmoid channel per label, background included
    data = build_data(cfg)
    data.start_epoch(0)
    model, plan = build_network(cfg, torch.device("cpu"))
    result = lr_range_test(model, data.loader, build_loss(cfg), "adamw", 1e-5, 1e-1, num_iter=6,
                           params=plan.param_groups(1.0), normalize=input_normalizer(cfg))
    assert len(result.lrs) == 6 and all(math.isfinite(v) for v in result.losses)
    assert 1e-5 <= result.suggestion <= 1e-1


def test_poly_schedule_is_nnunets() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_scheduler("poly", opt, epochs=1, steps_per_epoch=100, min_lr_ratio=1e-6)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[50] == pytest.approx(0.01 * (1 - 50 / 100) ** 0.9)
    assert all(a > b for a, b in pairwise(lrs)) and sched.medseg_interval == "step"


def test_steepest_suggestion_falls_back_when_it_sits_at_the_end_of_the_sweep() -> None:
    from medseg_tutorial.optim import SUGGESTIONS

    lrs = np.logspace(-6, 0, 30)
    still_falling = 2 - np.linspace(0, 1, 30) ** 3  # falls fastest at the very end: no safe steepest point
    assert SUGGESTIONS["steepest"](lrs, still_falling) == pytest.approx(max(lrs[-1] / 10, lrs[0]))
    dip = 1 - np.exp(-((np.log10(lrs) + 3) ** 2))  # a valley at 1e-3: steepest descent before it
    assert 1e-5 < SUGGESTIONS["steepest"](lrs, dip) < 1e-3
