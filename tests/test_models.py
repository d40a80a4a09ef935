"""build_model, the encoder/arch registries, input normalisation and first-conv adaptation."""

from __future__ import annotations

import pytest
import torch

from medseg_tutorial.models import (
    adapt_conv_weight,
    build_model,
    first_conv_name,
    input_normalization,
    normalize_input,
)
from medseg_tutorial.models.build import ARCHS, ENCODERS, IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from medseg_tutorial.models.channels import adapt_first_conv

SIZE = 64  # smallest size every encoder accepts (5 halvings)


def _seeded(encoder: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(encoder, weights=None, **kw).eval()


def test_registry_covers_the_book_encoders():
    required = {"vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "efficientnet-lite0"}
    assert required <= set(ENCODERS)
    assert set(ARCHS) == {"unet", "unetplusplus", "fpn", "deeplabv3plus"}


FIRST_CONV = {"resnet18": "conv1", "vgg16": "features.0", "efficientnet-lite0": "model.conv_stem"}


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_every_encoder_builds_offline_for_one_channel(encoder):
    model = _seeded(encoder, in_channels=1, classes=3)
    with torch.no_grad():
        out = model(torch.randn(1, 1, SIZE, SIZE))
    assert out.shape == (1, 3, SIZE, SIZE)
    assert model.medseg_config == ModelSpec(encoder, "unet", 1, 3, None, {})
    name = first_conv_name(model.encoder)  # found generically, whatever the encoder family
    assert model.encoder.get_submodule(name).in_channels == 1
    assert name == FIRST_CONV.get(encoder, name)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_builds(arch):
    model = _seeded("resnet18", arch=arch, classes=2)
    with torch.no_grad():
        assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 2, SIZE, SIZE)


def test_bad_names_are_explained():
    with pytest.raises(KeyError, match=r"unknown encoder 'resnet7'.*resnet34"):
        build_model("resnet7", weights=None)
    with pytest.raises(KeyError, match=r"unknown architecture 'segformer'.*unet"):
        build_model("resnet18", weights=None, arch="segformer")
    with pytest.raises(TypeError, match="encoder_weights"):
        build_model("resnet18", weights=None, encoder_weights="imagenet")


def test_smp_kwargs_are_recorded():
    model = _seeded("resnet18", decoder_channels=(64, 32, 16, 8, 4))
    assert model.medseg_config.smp_kwargs == {"decoder_channels": (64, 32, 16, 8, 4)}
    assert model.decoder.blocks[-1].conv2[0].out_channels == 4


def test_input_normalization_per_weight_source():
    assert input_normalization("resnet34", "imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    mean, std = input_normalization("efficientnet-lite0", "imagenet")
    assert mean == pytest.approx((127 / 255,) * 3) and std == pytest.approx((128 / 255,) * 3)
    assert input_normalization("vgg16", None) == ((0.0,) * 3, (1.0,) * 3)
    mean, std = input_normalization("resnet18", "imagenet", in_channels=1)
    assert mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and len(std) == 1


def test_lite0_normalization_is_the_tf_recipe():
    pixels = torch.randint(0, 256, (2, 3, 8, 8)).float()
    mean, std = input_normalization("efficientnet-lite0", "imagenet")
    got = normalize_input(pixels / 255, mean, std)
    torch.testing.assert_close(got, (pixels - 127) / 128)
    with pytest.raises(ValueError, match="3 means"):
        normalize_input(torch.zeros(1, 1, 8, 8), mean, std)


def test_one_channel_model_equals_rgb_model_on_repeated_grey():
    rgb = _seeded("resnet18")
    grey = _seeded("resnet18")
    grey.load_state_dict(rgb.state_dict())
    adapt_first_conv(grey.encoder, 1)
    assert grey.encoder.conv1.in_channels == 1 and grey.encoder.out_channels[0] == 1
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [2, 4, 5, 6])
def test_k_channel_rule_repeats_rgb_and_scales_by_3_over_k(k):
    weight = torch.randn(8, 3, 3, 3)
    adapted = adapt_conv_weight(weight, k)
    assert adapted.shape == (8, k, 3, 3)
    for i in range(k):
        torch.testing.assert_close(adapted[:, i], weight[:, i % 3] * 3 / k)


def test_six_channels_of_two_rgb_copies_keep_the_output():
    rgb = _seeded("resnet18")
    six = _seeded("resnet18")
    six.load_state_dict(rgb.state_dict())
    adapt_first_conv(six.encoder, 6)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(six(x.repeat(1, 2, 1, 1)), rgb(x), rtol=1e-4, atol=1e-4)


def test_one_channel_rule_is_the_sum():
    weight = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(adapt_conv_weight(weight, 1), weight.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="Conv2d weight"):
        adapt_conv_weight(torch.randn(4, 3), 1)
