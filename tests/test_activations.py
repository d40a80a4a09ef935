"""Decoding logits: sigmoid vs softmax, on tensors small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medseg_tutorial.activations import (
    HIDDEN_ACTIVATIONS,
    activation_curves,
    decode,
    probabilities,
)


def test_binary_decode_threshold():
    logits = torch.tensor([[[[-2.0, 0.0, 0.5, 3.0]]]])  # (1, 1, 1, 4); sigmoid = .12, .5, .62, .95
    np.testing.assert_array_equal(decode(logits, "binary"), [[[0, 0, 1, 1]]])  # 0.5 is not > 0.5
    np.testing.assert_array_equal(decode(logits, "binary", threshold=0.9), [[[0, 0, 0, 1]]])
    np.testing.assert_array_equal(decode(logits, "binary", threshold=0.1), [[[1, 1, 1, 1]]])
    out = decode(logits, "binary")
    assert out.shape == (1, 1, 4) and out.dtype == torch.long


def test_softmax_argmax_differs_from_sigmoid_thresholding():
    """Two pixels, three mutually exclusive classes.

    pixel 0: logits (2, 1, 3)    -> all sigmoids > 0.5, so per-channel thresholding says "all three
             classes" (impossible for exclusive classes); softmax picks class 2.
    pixel 1: logits (-1, -2, -3) -> all sigmoids < 0.5, thresholding says "no class at all";
             softmax still picks the most likely class, 0.
    """
    logits = torch.tensor([[2.0, -1.0], [1.0, -2.0], [3.0, -3.0]]).reshape(1, 3, 1, 2)
    np.testing.assert_array_equal(decode(logits, "multiclass"), [[[2, 0]]])
    np.testing.assert_array_equal(decode(logits, "multilabel")[0, :, 0], [[1, 0], [1, 0], [1, 0]])
    p = probabilities(logits, "multiclass")
    torch.testing.assert_close(p.sum(dim=1), torch.ones(1, 1, 2))
    expected0 = torch.softmax(torch.tensor([2.0, 1.0, 3.0]), 0)
    torch.testing.assert_close(p[0, :, 0, 0], expected0)
    assert p[0, 2, 0, 0] == pytest.approx(math.exp(3) / (math.exp(2) + math.exp(1) + math.exp(3)))
    s = probabilities(logits, "multilabel")
    assert (s[0, :, 0, 0] > 0.5).all() and s[0, :, 0, 0].sum() > 1  # sigmoids need not sum to 1


def test_multiclass_decode_equals_argmax_of_softmax_and_ignores_threshold():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2, 5, 6, 7, generator=g)
    labels = decode(logits, "multiclass")
    assert labels.shape == (2, 6, 7)
    torch.testing.assert_close(labels, probabilities(logits, "multiclass").argmax(dim=1))
    torch.testing.assert_close(decode(logits, "multiclass", threshold=0.99), labels)


def test_multilabel_keeps_channels_and_3d():
    logits = torch.zeros(1, 2, 3, 2, 2)  # a (D, H, W) volume
    logits[0, 0, 1] = 5.0
    logits[0, 1, :, 0] = 5.0
    labels = decode(logits, "multilabel")
    assert labels.shape == (1, 2, 3, 2, 2)
    assert labels[0, 0].sum() == 4 and labels[0, 1].sum() == 6
    assert labels[0, :, 1, 0, 0].tolist() == [1, 1]  # one voxel, two labels at once
    assert decode(logits[:, :1], "binary").shape == (1, 3, 2, 2)


def test_probabilities_are_sigmoid_or_softmax():
    x = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # (1, 2, 1, 1)
    torch.testing.assert_close(probabilities(x, "multilabel").flatten(), torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(probabilities(x, "multiclass").flatten(), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(probabilities(x[:, 1:], "binary").flatten(), torch.tensor([0.75]))


def test_validation():
    with pytest.raises(ValueError, match="1 channel"):
        decode(torch.zeros(1, 2, 3, 3), "binary")
    with pytest.raises(ValueError, match="Unknown mode"):
        decode(torch.zeros(1, 2, 3, 3), "softmax")
    with pytest.raises(ValueError, match="N, C"):
        probabilities(torch.zeros(3, 3), "multiclass")
    with pytest.raises(ValueError, match="threshold"):
        decode(torch.zeros(1, 1, 3, 3), "binary", threshold=2.0)


def test_hidden_activation_curves():
    assert set(HIDDEN_ACTIVATIONS) == {"relu", "leaky_relu", "elu", "gelu", "silu"}
    curves = activation_curves(np.array([-2.0, -0.5, 0.5, 2.0]))
    relu = curves["relu"]
    np.testing.assert_allclose(relu.value, [0, 0, 0.5, 2.0])
    np.testing.assert_allclose(relu.gradient, [0, 0, 1, 1])  # dead for x < 0
    np.testing.assert_allclose(curves["leaky_relu"].gradient, [0.01, 0.01, 1, 1])
    np.testing.assert_allclose(curves["elu"].value[:2], np.exp([-2.0, -0.5]) - 1)
    sig = 1 / (1 + np.exp(-relu.x))
    np.testing.assert_allclose(curves["silu"].value, relu.x * sig)
    np.testing.assert_allclose(curves["silu"].gradient, sig * (1 + relu.x * (1 - sig)))
    # finite differences agree with autograd on the default grid
    default = activation_curves()
    for name, c in default.items():
        assert c.x.shape == c.value.shape == c.gradient.shape == (401,)
        fd = np.gradient(c.value, c.x)
        inner = np.abs(c.x) > 0.05  # ReLU's kink at 0
        np.testing.assert_allclose(c.gradient[inner][1:-1], fd[inner][1:-1], atol=2e-3, err_msg=name)


def _perfect_logits(labels: torch.Tensor, mode: str, num_classes: int, margin: float) -> torch.Tensor:
    """Logits of a perfect model for label map ``labels`` (N, H, W) in ``mode``, ``margin`` from the boundary."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()
    signed = margin * (2 * onehot - 1)  # +margin for the true class, -margin elsewhere
    return {"binary": signed[:, 1:2], "multiclass": signed, "multilabel": signed, "region": signed[:, 1:]}[mode]


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel", "region"])
@pytest.mark.parametrize("margin", [0.5, 50.0])  # 50: every sigmoid is exactly 0.0 or 1.0 in float32
def test_a_model_with_perfect_logits_decodes_perfectly_in_every_mode(mode: str, margin: float) -> None:
    from medseg_tutorial.activations import label_map

    num_classes = 2 if mode == "binary" else 4
    labels = torch.randint(0, num_classes, (3, 17, 19), generator=torch.Generator().manual_seed(0))
    logits = _perfect_logits(labels, mode, num_classes, margin)
    assert torch.equal(label_map(logits, mode), labels)
    if mode != "multilabel":
        assert torch.equal(decode(logits, mode), labels)


def test_multilabel_label_map_compares_logits_not_saturated_sigmoids() -> None:
    """Two channels above ~17 both have sigmoid exactly 1.0 in float32; an argmax of the sigmoids
    then returns the first (the background), an argmax of the logits the class that is surer."""
    from medseg_tutorial.activations import label_map

    logits = torch.tensor([20.0, 40.0, -5.0]).view(1, 3, 1, 1)  # background and LV both "on"
    assert torch.sigmoid(logits)[0, 0] == torch.sigmoid(logits)[0, 1] == 1.0  # the float32 tie
    assert torch.sigmoid(logits).argmax(1).item() == 0  # what the old decoding returned
    assert label_map(logits, "multilabel").item() == 1


def test_region_mode_trains_without_a_background_channel() -> None:
    from medseg_tutorial.builders import build_loss
    from medseg_tutorial.config import load_config

    cfg = load_config("phantom", ["loss.mode=region", "loss.name=dice_bce"])
    assert cfg.model.classes == 2  # phantom: background, organ, lesion
    labels = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    loss = build_loss(cfg)
    perfect = loss(_perfect_logits(labels, "region", 3, 20.0), labels)
    wrong = loss(-_perfect_logits(labels, "region", 3, 20.0), labels)
    assert perfect.item() < 0.01 < wrong.item()
