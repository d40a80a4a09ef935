"""models.inflate: 2-D layers and the book's 2-D Unet turned into 3-D ones (chapter 10)."""

from __future__ import annotations

import pytest
import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

from medseg_tutorial.cnn import parameter_counts
from medseg_tutorial.models import build_model
from medseg_tutorial.models.inflate import (
    ACSConv,
    BatchNormAct3d,
    Conv3dSame,
    InflateError,
    UnetDecoder3d,
    inflate,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
D, H, W = 16, 32, 32


def _slice_and_volume(channels: int, depth: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (1, C, H, W) slice and the (1, C, depth, H, W) volume of copies of it."""
    torch.manual_seed(0)
    image = torch.randn(1, channels, H, W)
    return image, image.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()


@pytest.mark.parametrize(("kernel", "depth"), [(3, None), (5, None), (5, 3), (3, 1)])
@torch.no_grad()
def test_i3d_conv_on_equal_slices_answers_the_2d_conv(kernel, depth):
    conv = nn.Conv2d(2, 4, kernel, padding=kernel // 2)
    image, volume = _slice_and_volume(2)
    conv3d = inflate(conv, "i3d", depth)
    kd = kernel if depth is None else depth
    assert type(conv3d) is nn.Conv3d and conv3d.kernel_size == (kd, kernel, kernel)
    out, border = conv3d(volume), kd // 2  # zero padding enters `border` slices from each end
    assert out.shape == (1, 4, D, H, W)
    interior = out[:, :, border:D - border]
    torch.testing.assert_close(interior, conv(image).unsqueeze(2).expand_as(interior), atol=1e-5, rtol=0)
    assert conv.weight.ndim == 4  # the 2-D layer is untouched
    assert inflate(nn.Conv2d(2, 4, 1), "i3d", depth).kernel_size == (1, 1, 1)  # channel mixing stays pointwise


@pytest.mark.parametrize("kernel", [3, 5])
@torch.no_grad()
def test_i3d_same_padding_conv_with_stride_2(kernel):
    conv = Conv2dSame(2, 4, kernel, stride=2)
    image, volume = _slice_and_volume(2)
    conv3d = inflate(conv, "i3d")
    assert type(conv3d) is Conv3dSame and conv3d.stride == (2, 2, 2)
    out, expected = conv3d(volume), conv(image)
    assert out.shape == (1, 4, D // 2, *expected.shape[2:])  # TF "same": ceil(size / stride) on every axis
    interior = out[:, :, 1:-1]
    torch.testing.assert_close(interior, expected.unsqueeze(2).expand_as(interior), atol=1e-5, rtol=0)
    assert conv3d(torch.randn(1, 2, 15, 9, 7)).shape[2:] == (8, 5, 4)


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm2d(4), lambda: BatchNormAct2d(4, act_layer=nn.ReLU6)])
@torch.no_grad()
def test_inflated_batchnorm_keeps_statistics_and_affine(make):
    bn = make()
    torch.manual_seed(1)
    for tensor in (bn.weight, bn.bias, bn.running_mean):
        tensor.copy_(torch.randn(4))
    bn.running_var.copy_(torch.rand(4) + 0.5)
    bn.eval()
    bn3d = inflate(bn)
    assert type(bn3d) is (BatchNormAct3d if isinstance(bn, BatchNormAct2d) else nn.BatchNorm3d)
    assert not bn3d.training
    for key, value in bn.state_dict().items():
        assert torch.equal(bn3d.state_dict()[key], value), key
    image, volume = _slice_and_volume(4)
    out = bn3d(volume)
    torch.testing.assert_close(out, bn(image).unsqueeze(2).expand_as(out), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("conv", "split"),
    [
        (nn.Conv2d(3, 7, 3, padding=1), [3, 2, 2]),
        (nn.Conv2d(6, 6, 5, padding=2, groups=6), [2, 2, 2]),  # depthwise: channels go to one plane each
        (Conv2dSame(6, 6, 3, stride=2, groups=6), [2, 2, 2]),  # EfficientNet's downsampling depthwise conv
    ],
)
@torch.no_grad()
def test_acs_conv_planes_answer_the_2d_conv(conv, split):
    acs = inflate(conv, "acs")
    assert isinstance(acs, ACSConv) and [p[1].stop - p[1].start for p in acs.planes] == split
    assert acs.weight.shape == conv.weight.shape  # the 2-D kernels themselves
    cin, (a, c, _) = conv.in_channels, split
    image, volume = _slice_and_volume(cin)
    out, expected = acs(volume), conv(image)
    stride = conv.stride[0]
    assert out.shape == (1, conv.out_channels, D // stride, *expected.shape[2:])
    # axial channels: every output slice is the 2-D conv of an input slice
    axial = out[:, :a]
    torch.testing.assert_close(axial, expected[:, :a].unsqueeze(2).expand_as(axial), atol=1e-5, rtol=0)
    # coronal channels see (depth, width) planes; sagittal ones (depth, height) planes
    torch.manual_seed(2)
    plane = torch.randn(1, cin, D, W)
    coronal = acs(plane.unsqueeze(3).expand(-1, -1, -1, H, -1))[:, a:a + c]
    want = conv(plane)[:, a:a + c].unsqueeze(3)
    torch.testing.assert_close(coronal, want.expand_as(coronal), atol=1e-5, rtol=0)
    plane = torch.randn(1, cin, D, H)
    sagittal = acs(plane.unsqueeze(4).expand(-1, -1, -1, -1, W))[:, a + c:]
    want = conv(plane)[:, a + c:].unsqueeze(4)
    torch.testing.assert_close(sagittal, want.expand_as(sagittal), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "groups"), [(4, 8, 3, 1, 1), (7, 7, 5, 2, 7)])
@torch.no_grad()
def test_acs_conv_matches_the_acsconv_reference(cin, cout, kernel, stride, groups):
    reference = pytest.importorskip("acsconv.operators")  # Yang et al.'s package, for reference only
    torch.manual_seed(3)
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups)
    theirs = reference.ACSConv(cin, cout, kernel, stride, kernel // 2, groups=groups)
    theirs.load_state_dict(conv.state_dict())
    x = torch.randn(2, cin, 8, 10, 12)
    torch.testing.assert_close(inflate(conv, "acs")(x), theirs(x), atol=1e-5, rtol=0)


def test_mode_train_state_and_frozen_parameters_are_kept():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.MaxPool2d(2),
                          nn.Upsample(scale_factor=2, mode="bilinear"), nn.Dropout2d(0.1))
    model[0].weight.requires_grad_(False)
    model.eval()
    model3d = inflate(model)
    assert [type(m) for m in model3d] == [nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.Upsample, nn.Dropout3d]
    assert model3d[3].mode == "trilinear" and not model3d.training and not model3d[1].training
    assert not model3d[0].weight.requires_grad and model3d[0].bias.requires_grad
    assert model3d(torch.randn(1, 1, 4, 8, 8)).shape == (1, 2, 4, 8, 8)


def test_unknown_2d_layers_and_bad_arguments_are_refused():
    with pytest.raises(InflateError, match=r"Sequential\.1 .*ConvTranspose2d"):
        inflate(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ConvTranspose2d(1, 1, 2)))
    with pytest.raises(InflateError, match="PixelShuffle"):
        inflate(nn.Sequential(nn.PixelShuffle(2)))
    with pytest.raises(ValueError, match="mode"):
        inflate(nn.Conv2d(1, 1, 3), "2.5d")
    with pytest.raises(ValueError, match="depth"):
        inflate(nn.Conv2d(1, 1, 3), "acs", depth=3)
    with pytest.raises(InflateError, match="FPNDecoder"):
        inflate(build_model("resnet18", None, in_channels=1, classes=3, arch="fpn"))


# --- the book's model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def book_model() -> nn.Module:
    return build_model("efficientnet-lite0", "imagenet", in_channels=1, classes=3)


def _conv_growth(model: nn.Module) -> int:
    """Parameters I3D adds: a k x k kernel repeated k times gains (k - 1) copies of its weight."""
    return sum((m.kernel_size[0] - 1) * m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("mode", ["i3d", "acs"])
def test_the_book_model_inflated_trains_on_volumes(book_model, mode):
    before = {k: v.clone() for k, v in book_model.state_dict().items()}
    model3d = inflate(book_model, mode)
    assert isinstance(model3d.decoder, UnetDecoder3d) and model3d.medseg_inflation["mode"] == mode
    total2d, total3d = parameter_counts(book_model)["total"], parameter_counts(model3d)["total"]
    if mode == "i3d":
        assert total3d == total2d + _conv_growth(book_model) > total2d
    else:  # ACS reuses the 2-D kernels: same names, shapes and values (before training changes them)
        assert total3d == total2d
        state2d, state3d = book_model.state_dict(), model3d.state_dict()
        assert state3d.keys() == state2d.keys()
        assert all(torch.equal(state3d[k], state2d[k]) for k in state2d)

    out = model3d(torch.randn(1, 1, 32, 64, 64))
    assert out.shape == (1, 3, 32, 64, 64)
    out.square().mean().backward()
    stem = model3d.encoder.model.conv_stem
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    assert model3d.segmentation_head[0].weight.grad.abs().sum() > 0

    after = book_model.state_dict()  # the 2-D model is left as it was
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, (nn.Conv3d, ACSConv)) for m in book_model.modules())


@torch.no_grad()
def test_in_plane_i3d_model_is_the_2d_model_per_slice(book_model):
    """depth=1 keeps every kernel in-plane: on equal slices, the 3-D net answers the 2-D net per slice."""
    model2d = book_model.eval()
    model3d = inflate(model2d, "i3d", depth=1)
    assert parameter_counts(model3d)["total"] == parameter_counts(model2d)["total"]
    torch.manual_seed(4)
    image = torch.randn(1, 1, 64, 64)
    out = model3d(image.unsqueeze(2).expand(-1, -1, 4, -1, -1))
    torch.testing.assert_close(out, model2d(image).unsqueeze(2).expand_as(out), atol=1e-4, rtol=1e-4)
    model2d.train()


@torch.no_grad()
def test_monai_reference_unet_runs_on_the_same_volumes():
    """The reference 3-D U-Net chapter 10 compares with (MONAI's spleen-tutorial configuration)."""
    nets = pytest.importorskip("monai.networks.nets")
    unet = nets.UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
                     strides=(2, 2, 2, 2), num_res_units=2)
    assert unet(torch.randn(1, 1, 32, 64, 64)).shape == (1, 3, 32, 64, 64)
