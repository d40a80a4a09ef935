"""Offline ImageNet weights: the EfficientNet-Lite0 conversion, fail-fast hub access, local files."""

from __future__ import annotations

import threading
import time

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from safetensors.torch import save_file
from skimage import data

from medseg_tutorial.models import build_model
from medseg_tutorial.models import weights as weights_mod
from medseg_tutorial.models.weights import (
    WeightsUnavailableError,
    convert_by_order,
    efficientnet_lite0_file,
    efficientnet_lite0_state_dict,
    lite0_input,
    load_efficientnet_lite0_imagenet,
)


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """The package's original tensors, in its own (EfficientNet-PyTorch) naming and order."""
    return torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def timm_names() -> list[str]:
    return list(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())


def test_conversion_pairs_all_296_tensors_in_order(source, timm_names):
    converted = efficientnet_lite0_state_dict()
    assert len(source) == 296
    assert list(converted) == timm_names
    for (src_key, src), dst in zip(source.items(), converted.values()):
        assert torch.equal(src, dst), src_key


def test_conversion_refuses_mismatched_pairs():
    template = {"stem.weight": torch.zeros(4, 3), "bn.running_mean": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"tensor #1 .*_bn0.bias \(4,\) vs bn.running_mean"):
        convert_by_order({"_stem.weight": torch.zeros(4, 3), "_bn0.bias": torch.zeros(4)}, template)
    with pytest.raises(ValueError, match=r"tensor #0 .*\(4, 2\) vs stem.weight \(4, 3\)"):
        convert_by_order({"_stem.weight": torch.zeros(4, 2), "_bn0.running_mean": torch.zeros(4)}, template)
    with pytest.raises(ValueError, match="1 tensors, but the target model has 2"):
        convert_by_order({"_stem.weight": torch.zeros(4, 3)}, template)


def test_converted_classifier_recognises_imagenet_photos(record_property):
    """The weights only mean something if the network still sees a cat and an espresso."""
    model = load_efficientnet_lite0_imagenet()
    found = {}
    for name in ("chelsea", "coffee"):
        with torch.no_grad():
            probs = model(lite0_input(getattr(data, name)())).softmax(-1)[0]
        p, top1 = probs.max(0)
        found[name] = (int(top1), float(p))
        record_property(f"{name}_top1", found[name])
        print(f"{name}: top-1 class {int(top1)} with p={float(p):.3f}")
    assert found["chelsea"][0] == 285 and found["chelsea"][1] > 0.5  # Egyptian cat (281-285 are cats)
    assert found["coffee"][0] == 967 and found["coffee"][1] > 0.5  # espresso


def test_unet_encoder_holds_the_source_tensors_exactly(source, timm_names):
    encoder_state = build_model("efficientnet-lite0", weights="imagenet").encoder.state_dict()
    compared = 0
    for (src_key, src), name in zip(source.items(), timm_names):
        if "model." + name in encoder_state:
            assert torch.equal(encoder_state["model." + name], src), src_key
            compared += 1
    assert compared == len(encoder_state) == 288  # 296 minus conv_head, bn2 and the classifier


def test_one_channel_lite0_stem_is_the_sum_of_rgb_filters(source):
    model = build_model("efficientnet-lite0", weights="imagenet", in_channels=1)
    stem = model.encoder.model.conv_stem.weight
    torch.testing.assert_close(stem, source["_conv_stem.weight"].sum(1, keepdim=True))


# --------------------------------------------------------------------------- hub weights offline


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _assert_helpful_and_fast(start: float, err: pytest.ExceptionInfo) -> None:
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "smp-hub/resnet34.imagenet" in message and "fetch_hub_weights" in message
    assert "weights='/path/to/resnet34_imagenet.safetensors'" in message and "HF_HUB_CACHE" in message


def test_hub_offline_mode_fails_fast_with_instructions(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set") as err:
        build_model("resnet34", weights="imagenet")
    _assert_helpful_and_fast(start, err)


def test_hanging_network_fails_fast_with_instructions(empty_hf_cache, monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):  # a connection that never answers, like a black-holed DNS
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(weights_mod.socket, "create_connection", hang)
    start = time.monotonic()
    try:
        with pytest.raises(WeightsUnavailableError, match="unreachable") as err:
            build_model("resnet34", weights="imagenet")
    finally:
        release.set()
    _assert_helpful_and_fast(start, err)


def test_hub_weights_come_from_the_cache_without_network(tmp_path, monkeypatch):
    torch.manual_seed(1)
    state = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    cached = tmp_path / "model.safetensors"
    save_file(state, cached)

    def from_cache(repo_id, filename, *, revision, local_files_only=False):
        assert (repo_id, filename, local_files_only) == (
            "smp-hub/resnet18.imagenet",
            "model.safetensors",
            True,
        )
        return str(cached)

    monkeypatch.setattr(weights_mod, "hf_hub_download", from_cache)
    monkeypatch.setattr(weights_mod, "_reachable", lambda *a: pytest.fail("probed the network"))
    model = build_model("resnet18", weights="imagenet")
    for key, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, state[key]), key


# --------------------------------------------------------------------------- local weight files


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return smp.encoders.get_encoder("resnet18", weights=None).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_state_dict_from_a_local_file(tmp_path, resnet18_state, suffix):
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(resnet18_state, path)
    else:
        save_file(resnet18_state, path)
    model = build_model("resnet18", weights=path, classes=3)
    assert model.medseg_config.weights == str(path)
    for key, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, resnet18_state[key]), key

    grey = build_model("resnet18", weights=path, in_channels=1)
    torch.testing.assert_close(grey.encoder.conv1.weight, resnet18_state["conv1.weight"].sum(1, keepdim=True))


def test_torchvision_classifier_file_loads_into_the_encoder(tmp_path):
    """The classic torchvision .pth (with its fc layer) is accepted: smp's encoder drops fc."""
    torch.manual_seed(3)
    classifier = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(classifier, path)
    model = build_model("resnet18", weights=path)
    assert torch.equal(model.encoder.layer4[1].conv2.weight, classifier["layer4.1.conv2.weight"])


def test_wrong_encoder_file_names_the_file(tmp_path, resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(ValueError, match=r"resnet18\.pth: weights do not fit the ResNetEncoder"):
        build_model("resnet50", weights=path)
