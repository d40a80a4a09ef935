"""Chapter 2 utilities: receptive fields (computed and measured), encoder stages, gradient flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

from medseg_tutorial import cnn
from medseg_tutorial.models import build_model


def test_receptive_field_recursion_by_hand():
    rows = cnn.receptive_field([("c1", 3, 1), ("c2", 3, 1), ("pool", 2, 2), ("c3", 3, 1), ("d", 3, 1, 2)])
    assert [r.receptive_field for r in rows] == [3, 5, 6, 10, 18]
    assert [r.jump for r in rows] == [1, 1, 2, 2, 2]


def test_two_3x3_convs_see_as_much_as_one_5x5():
    assert (
        cnn.receptive_field([("a", 3), ("b", 3)])[-1].receptive_field
        == cnn.receptive_field([("c", 5)])[-1].receptive_field
    )


def test_conv_layers_follow_the_main_path_of_a_resnet():
    model = build_model("resnet34", weights=None, in_channels=1, classes=2)
    layers = cnn.conv_layers(model.encoder)
    assert [(layer.name, layer.kernel, layer.stride) for layer in layers[:2]] == [
        ("conv1", 7, 2),
        ("maxpool", 3, 2),
    ]
    assert not any("downsample" in layer.name for layer in layers)
    rows = cnn.receptive_field(layers)
    assert rows[1].receptive_field == 11  # the stem: 7x7/2 conv then 3x3/2 max-pool
    assert rows[-1].jump == 32


def test_vgg16_stage_receptive_fields():
    model = build_model("vgg16", weights=None, in_channels=1, classes=2)
    stages = cnn.stage_receptive_fields(model, (1, 1, 64, 64))
    assert [s["downsampling"] for s in stages] == [1, 2, 4, 8, 16, 32]
    assert [s["receptive_field"] for s in stages] == [5, 14, 40, 92, 196, 212]


def test_measured_receptive_field_matches_theory():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
    )
    theory = cnn.receptive_field(cnn.conv_layers(net))[-1].receptive_field
    assert theory == 10
    assert cnn.measured_receptive_field(net, in_channels=1, size=32) == theory


def test_stage_shapes_and_parameter_counts_of_a_unet():
    model = build_model("resnet18", weights=None, in_channels=1, classes=3)
    shapes = cnn.stage_shapes(model, (1, 1, 64, 64))
    assert shapes[0]["shape"] == (1, 1, 64, 64)
    assert shapes[-1]["shape"] == (1, 512, 2, 2) and shapes[-1]["downsampling"] == 32
    counts = cnn.parameter_counts(model)
    assert set(counts) == {"encoder", "decoder", "segmentation_head", "total"}
    assert counts["encoder"] + counts["decoder"] + counts["segmentation_head"] == counts["total"]


def test_encoder_features_keep_the_training_mode():
    model = build_model("resnet18", weights=None, in_channels=1, classes=2)
    model.train()
    feats = cnn.encoder_features(model, torch.zeros(1, 1, 32, 32))
    assert len(feats) == 6 and model.encoder.training and not feats[-1].requires_grad


def test_imagenet_top_k_recognises_the_cat_and_the_espresso():
    cat = cnn.imagenet_top_k(data.chelsea(), k=3)
    coffee = cnn.imagenet_top_k(data.coffee(), k=1)
    assert cat[0][:2] == (285, "Egyptian cat") and cat[0][2] > 0.5
    assert coffee[0][:2] == (967, "espresso")
    assert cat[0][2] >= cat[1][2] >= cat[2][2]


def test_deep_conv_net_counts_its_layers_and_checks_arguments():
    net = cnn.DeepConvNet(depth=8, width=4, in_channels=1, classes=3)
    assert len(net.convs()) == 8
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="even"):
        cnn.DeepConvNet(depth=7)
    with pytest.raises(ValueError, match="init"):
        cnn.DeepConvNet(init="xavier")


def test_residual_connections_keep_gradients_alive_at_initialisation():
    """The measurement of the chapter, small: with PyTorch's default initialisation the gradient
    of a deep plain CNN vanishes towards the input; with identity shortcuts it does not."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 1, 16, 16, generator=g)
    masks = (images[:, 0] > 0.5).long()
    plain = cnn.gradient_flow(images, masks, residual=False, depth=20, width=8, steps=2)
    resid = cnn.gradient_flow(images, masks, residual=True, depth=20, width=8, steps=2)
    assert len(plain.grad_norm_init) == len(resid.grad_norm_init) == 20
    assert plain.grad_norm_init[0] < 1e-4 * plain.grad_norm_init[-1]  # vanished at the stem
    assert resid.grad_norm_init[0] > 1e-2 * resid.grad_norm_init[-1]
    assert len(plain.losses) == 2 and np.isfinite(plain.losses).all()


def test_gradient_flow_is_reproducible():
    images = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, 2:5, 2:5] = 1
    a = cnn.gradient_flow(images, masks, residual=True, depth=6, width=4, steps=3, seed=3)
    b = cnn.gradient_flow(images, masks, residual=True, depth=6, width=4, steps=3, seed=3)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.grad_norm_final, b.grad_norm_final)


def test_small_table_prepares_a_few_real_cases(shared_root):
    table = cnn.small_table(
        "msd_hippocampus", max_cases=2, size=(32, 32), foreground_only=True, root=shared_root
    )
    assert table.images.shape[1:] == (1, 32, 32) and table.images.dtype == np.float32
    assert len(table.patients) == 2 and table.info.name == "msd_hippocampus"
    assert all(m.any() for m in table.masks)  # foreground_only
    assert set(np.unique(table.masks)) <= {0, 1, 2}


def test_gradient_flow_restores_the_thread_setting():
    before = torch.get_num_threads()
    images = torch.randn(1, 1, 8, 8)
    cnn.gradient_flow(images, (images[:, 0] > 0).long(), residual=False, depth=4, width=2, steps=1, threads=1)
    assert torch.get_num_threads() == before


def test_small_table_crop_zooms_in_on_the_centre(shared_root):
    if not (shared_root / "acdc").is_dir():
        pytest.skip("ACDC not present")
    full = cnn.small_table("acdc", max_cases=2, size=(64, 64), root=shared_root)
    zoomed = cnn.small_table("acdc", max_cases=2, size=(64, 64), crop=(144, 144), root=shared_root)
    assert zoomed.images.shape == full.images.shape
    assert (zoomed.masks > 0).sum() > 2 * (full.masks > 0).sum()  # the heart covers more pixels
    assert (zoomed.spacing < full.spacing).all()  # finer pixels after the crop
    assert zoomed.meta["crop"] == (144, 144)
