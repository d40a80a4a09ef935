"""Transfer strategies: stage splitting, freezing (weights *and* BatchNorm statistics), LRs, schedules."""

from __future__ import annotations

import copy
import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medseg_tutorial.strategies import (
    STRATEGIES,
    encoder_stages,
    get_strategy,
    model_groups,
)

# EfficientNet-Lite0 in smp 0.6: the deprecated smp copy (still in smp.encoders.encoders) and timm's
# own model behind smp's "tu-" wrapper (what medseg_tutorial.models builds).
EFFNET = "timm-tf_efficientnet_lite0"
EFFNET_TU = "tu-tf_efficientnet_lite0"
ENCODERS = ["resnet18", EFFNET, EFFNET_TU, "vgg16_bn"]

# Expected stage contents: the modules smp's own encoder forward() uses for feature map k.
EXPECTED_STAGES = {
    "resnet18": {
        "encoder.stage1": ["encoder.conv1.", "encoder.bn1."],
        "encoder.stage2": ["encoder.layer1."],
        "encoder.stage3": ["encoder.layer2."],
        "encoder.stage4": ["encoder.layer3."],
        "encoder.stage5": ["encoder.layer4."],
    },
    EFFNET: {
        "encoder.stage1": ["encoder.conv_stem.", "encoder.bn1.", "encoder.blocks.0."],
        "encoder.stage2": ["encoder.blocks.1."],
        "encoder.stage3": ["encoder.blocks.2."],
        "encoder.stage4": ["encoder.blocks.3.", "encoder.blocks.4."],
        "encoder.stage5": ["encoder.blocks.5.", "encoder.blocks.6."],
        "encoder.unused": ["encoder.conv_head.", "encoder.bn2."],  # kept by smp, never run
    },
    EFFNET_TU: {
        "encoder.stage1": ["encoder.model.conv_stem.", "encoder.model.bn1.", "encoder.model.blocks.0."],
        "encoder.stage2": ["encoder.model.blocks.1."],
        "encoder.stage3": ["encoder.model.blocks.2."],
        "encoder.stage4": ["encoder.model.blocks.3.", "encoder.model.blocks.4."],
        "encoder.stage5": ["encoder.model.blocks.5.", "encoder.model.blocks.6."],
    },
    "vgg16_bn": {  # features.{6,13,23,33,43} are max-pools
        "encoder.stage0": [f"encoder.features.{i}." for i in (0, 1, 3, 4)],
        "encoder.stage1": [f"encoder.features.{i}." for i in (7, 8, 10, 11)],
        "encoder.stage2": [f"encoder.features.{i}." for i in (14, 15, 17, 18, 20, 21)],
        "encoder.stage3": [f"encoder.features.{i}." for i in (24, 25, 27, 28, 30, 31)],
        "encoder.stage4": [f"encoder.features.{i}." for i in (34, 35, 37, 38, 40, 41)],
    },
}


def _unet(encoder: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # smp deprecates the timm- names
        torch.manual_seed(0)
        return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=2)


_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: on a shared CPU, extra intra-op threads cost far more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ENCODERS)
def encoder_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model(encoder_name: str) -> nn.Module:
    """A fresh copy of a U-Net per test (built once per encoder)."""
    if encoder_name not in _CACHE:
        _CACHE[encoder_name] = _unet(encoder_name)
    return copy.deepcopy(_CACHE[encoder_name])


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One step with the *plain* model.train(): frozen BatchNorm must survive it."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 2, (2, 32, 32))
    model.train()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def _owner(group_names: list[str], key: str) -> str:
    """The group whose parameter prefixes own the state-dict entry ``key``."""
    return next(n for n in group_names if key.startswith(n))


def _changed_by_group(model: nn.Module, before: dict[str, torch.Tensor], plan) -> dict[str, dict[str, bool]]:
    """{group: {state key: changed?}} for every parameter and BatchNorm buffer."""
    out: dict[str, dict[str, bool]] = {g.name: {} for g in plan.groups}
    module_of = dict(model.named_modules())
    after = model.state_dict()
    for g in plan.groups:
        for name in g.params:
            out[g.name][name] = not torch.equal(before[name], after[name])
        for bn in g.batchnorms():
            prefix = next(n for n, m in module_of.items() if m is bn)
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                key = f"{prefix}.{buf}"
                out[g.name][key] = not torch.equal(before[key], after[key])
    return out


# --------------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------------


def test_encoder_stages_match_smp_forward(model: nn.Module, encoder_name: str) -> None:
    expected = EXPECTED_STAGES[encoder_name]
    groups = encoder_stages(model)
    assert [g.name for g in groups] == list(expected)
    for g in groups:
        owners = {next((p for p in expected[g.name] if name.startswith(p)), None) for name in g.params}
        assert owners == set(expected[g.name]), (g.name, owners)


def test_stages_agree_with_smp_get_stages(model: nn.Module) -> None:
    """smp's get_stages() only lists strides 16 and 32 (for dilation): they must be our stages 4 and 5."""
    try:
        smp_stages = model.encoder.get_stages()
    except (NotImplementedError, AttributeError):  # VGG cannot be dilated; "tu-" has no get_stages()
        pytest.skip("encoder has no get_stages()")
    ours = {g.name: set(map(id, g.params.values())) for g in encoder_stages(model)}
    for stride, modules in smp_stages.items():
        ids = {id(p) for m in modules for p in m.parameters()}
        assert ids and ids <= ours[f"encoder.stage{stride.bit_length() - 1}"]


def test_groups_partition_the_model(model: nn.Module) -> None:
    groups = model_groups(model)
    ids = [id(p) for g in groups for p in g.params.values()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert [g.name for g in groups][-2:] == ["decoder", "segmentation_head"]


# --------------------------------------------------------------------------------------------------
# freezing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "opt"),
    [(("frozen_encoder", {}), "adamw"), (("frozen_stages", {"k": 2}), "adamw"), (("frozen_stages", {"k": 2}), "sgd")],
)
def test_frozen_parts_are_bit_identical_after_a_step(model: nn.Module, strategy, opt: str) -> None:
    plan = get_strategy(strategy[0], **strategy[1]).apply(model)
    groups = plan.param_groups(base_lr=1e-2, weight_decay=0.1)
    optimizer = torch.optim.AdamW(groups) if opt == "adamw" else torch.optim.SGD(groups, momentum=0.9)
    before = _snapshot(model)
    _train_step(model, optimizer)
    frozen = set(plan.frozen())
    stages = [g.name for g in plan.groups if g.name.startswith("encoder.stage")]
    expected_frozen = stages if strategy[0] == "frozen_encoder" else stages[:2]
    assert frozen - {"encoder.unused"} == set(expected_frozen)
    for group, changed in _changed_by_group(model, before, plan).items():
        if group in frozen:
            assert not any(changed.values()), f"{group} moved: {[k for k, v in changed.items() if v]}"
        else:
            weights = [k for k in changed if k.endswith("weight") and before[k].ndim > 1]
            assert all(changed[k] for k in weights), group  # decayed weights always move
            bn_stats = [k for k in changed if k.endswith("running_mean")]
            assert all(changed[k] for k in bn_stats), group


def test_train_mode_keeps_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    plan = get_strategy("frozen_stages", k=1).apply(model)
    plan.train_mode(model)
    first, rest = plan.groups[0], plan.groups[1:]
    assert first.batchnorms() and not any(bn.training for bn in first.batchnorms())
    assert all(bn.training for g in rest if g.name not in plan.frozen() for bn in g.batchnorms())


def test_frozen_parameters_have_no_grad_after_backward(model: nn.Module) -> None:
    plan = get_strategy("frozen_encoder").apply(model)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for g in plan.groups:
        for p in g.params.values():
            assert (p.grad is None) == (g.name in plan.frozen())


# --------------------------------------------------------------------------------------------------
# gradual unfreezing
# --------------------------------------------------------------------------------------------------


def test_gradual_unfreezing_deepest_first_and_params_then_train(model: nn.Module) -> None:
    plan = get_strategy("gradual_unfreezing", every=1).apply(model)
    stages = [g.name for g in plan.groups if g.name.startswith("encoder.stage")]
    optimizer = torch.optim.AdamW(plan.param_groups(1e-2, weight_decay=0.01))  # built once, at epoch 0
    assert plan.on_epoch_start(model, 0) == []
    assert set(stages) <= set(plan.frozen())
    for epoch, stage in enumerate(reversed(stages), start=1):
        assert plan.on_epoch_start(model, epoch) == [stage]
        assert plan.on_epoch_start(model, epoch) == []  # idempotent
        if 2 < epoch < len(stages):
            continue  # a training step for the two deepest and the shallowest stage is enough
        before = _snapshot(model)
        _train_step(model, optimizer)
        changed = _changed_by_group(model, before, plan)
        assert any(changed[stage].values()) and all(
            changed[stage][k] for k in changed[stage] if k.endswith("running_mean")
        )
        for still_frozen in set(plan.frozen()) - {"encoder.unused"}:
            assert not any(changed[still_frozen].values())
    assert plan.frozen() in ([], ["encoder.unused"])


def test_gradual_unfreezing_explicit_schedule_and_resume(model: nn.Module) -> None:
    plan = get_strategy("gradual_unfreezing", schedule={3: 2, 6: 3}).apply(model)
    stages = [g.name for g in plan.groups if g.name.startswith("encoder.stage")]
    assert plan.on_epoch_start(model, 2) == []
    assert plan.on_epoch_start(model, 3) == [stages[-1], stages[-2]]
    assert all(p.requires_grad for n in stages[-2:] for p in plan.group(n).params.values())
    assert not any(p.requires_grad for p in plan.group(stages[-3]).params.values())
    # resuming at epoch 9 applies everything that was due
    resumed = get_strategy("gradual_unfreezing", schedule={3: 2, 6: 3}).apply(copy.deepcopy(model))
    assert resumed.on_epoch_start(model, 9) == [stages[-1], stages[-2], stages[-3]]


# --------------------------------------------------------------------------------------------------
# learning rates and parameter groups
# --------------------------------------------------------------------------------------------------


def test_discriminative_lr_is_geometric(model: nn.Module) -> None:
    plan = get_strategy("discriminative_lr", decay=0.5).apply(model)
    lrs = {g["name"]: g["lr"] for g in plan.param_groups(base_lr=1e-3, weight_decay=1e-4)}
    stages = [g.name for g in plan.groups if g.name.startswith("encoder.stage")]
    assert lrs["decoder"] == lrs["segmentation_head"] == 1e-3
    for i, stage in enumerate(reversed(stages), start=1):
        assert lrs[stage] == pytest.approx(1e-3 * 0.5**i)
        assert lrs[f"{stage}.no_decay"] == lrs[stage]


def test_full_finetune_encoder_lr_scale(model: nn.Module) -> None:
    plan = get_strategy("full_finetune", encoder_lr_scale=0.1).apply(model)
    for g in plan.param_groups(base_lr=1.0):
        assert g["lr"] == pytest.approx(0.1 if g["name"].startswith("encoder") else 1.0)
    assert plan.frozen() in ([], ["encoder.unused"])


def test_param_groups_no_decay_on_norms_and_biases(model: nn.Module) -> None:
    plan = get_strategy("full_finetune").apply(model)
    groups = plan.param_groups(base_lr=1e-3, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    unused = {id(p) for g in plan.groups if g.name == "encoder.unused" for p in g.params.values()}
    assert set(seen) == {id(p) for p in model.parameters()} - unused
    for g in groups:
        assert g["weight_decay"] == (0.0 if g["name"].endswith(".no_decay") else 0.05)
        assert all((p.ndim <= 1) == g["name"].endswith(".no_decay") for p in g["params"])
    torch.optim.AdamW(groups)  # torch accepts them as they are


def test_scratch_reinitialises_the_encoder(model: nn.Module) -> None:
    before = _snapshot(model)
    model.encoder.apply(lambda m: m.running_mean.fill_(0.5) if isinstance(m, _BatchNorm) else None)
    plan = get_strategy("scratch").apply(model)
    after = model.state_dict()
    convs = [k for k in before if k.startswith("encoder") and before[k].ndim == 4 and "unused" not in k]
    assert all(not torch.equal(before[k], after[k]) for k in convs)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder"))
    assert all(torch.count_nonzero(m.running_mean) == 0 for m in model.encoder.modules() if isinstance(m, _BatchNorm))
    assert plan.frozen() in ([], ["encoder.unused"])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_counts_add_up(model: nn.Module, name: str) -> None:
    plan = get_strategy(name).apply(model)
    c = plan.counts(model)
    total = sum(p.numel() for p in model.parameters())
    assert c["total"] == total == c["trainable"] + c["frozen"]
    assert c["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(g["params"] for g in c["per_group"].values()) == total
    assert all(g.name in plan.describe() for g in plan.groups)


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="frozen_encoder"):
        get_strategy("freeze_everything")
