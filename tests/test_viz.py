"""Plot helpers: they draw what they are given, accept numpy and torch, and mark decoding conflicts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from medseg_tutorial import viz
from medseg_tutorial.activations import activation_curves


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_as_image_accepts_channel_first_arrays_and_tensors():
    img = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    assert viz.as_image(img).shape == (4, 5)
    np.testing.assert_array_equal(viz.as_image(img, channel=1), img[1])
    np.testing.assert_array_equal(viz.as_image(torch.from_numpy(img)[None]), img[0])
    photo = np.zeros((4, 5, 3), np.uint8)
    assert viz.as_image(photo).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="cannot display"):
        viz.as_image(np.zeros((2, 3, 4, 5)))


def test_label_colors_leave_background_transparent():
    cmap = viz.label_colors(4)
    assert cmap.N == 4
    assert cmap(0)[3] == 0.0 and all(cmap(k)[3] == 1.0 for k in (1, 2, 3))


def test_overlay_draws_image_mask_and_legend():
    image = np.random.default_rng(0).random((1, 16, 16))
    mask = np.zeros((16, 16), int)
    mask[4:8, 4:8] = 1
    mask[10:12, 3:9] = 2
    ax = viz.overlay(image, mask, class_names=("background", "a", "b"), title="t")
    assert len(ax.images) == 2  # grey image + label layer
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    ax = viz.overlay(image, mask, contour=True)
    assert len(ax.collections) >= 2  # one contour set per present class


def test_show_examples_and_show_images_make_one_panel_per_item():
    ex = [
        {"image": np.zeros((8, 8)), "mask": np.eye(8, dtype=int), "title": f"{i}", "caption": "CC"}
        for i in range(3)
    ]
    fig = viz.show_examples(ex, ncols=2)
    assert len(fig.axes) == 4 and fig.axes[0].get_title() == "0"
    fig = viz.show_images([np.ones((4, 4)), -np.ones((4, 4))], titles=["a", "b"], symmetric=[False, True])
    assert fig.axes[1].images[0].get_clim() == (-1.0, 1.0)


def test_top_channels_prefers_structured_channels():
    feats = torch.zeros(1, 4, 8, 8)
    feats[0, 2, :4] = 1.0  # half on, half off: the largest spread
    feats[0, 0, 0, 0] = 1.0
    feats[0, 3] = 5.0  # constant: no structure
    assert viz.top_channels(feats, 2).tolist() == [2, 0]


def test_plot_feature_maps_one_row_per_stage():
    feats = [torch.randn(1, 3, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]
    fig = viz.plot_feature_maps(feats, names=["s0", "s1", "s2"], k=4, image=np.zeros((16, 16)))
    assert len(fig.axes) == 3 * 6  # input + label column + k maps
    drawn = sum(1 for ax in fig.axes if ax.images)
    assert drawn == 1 + 3 + 4 + 4  # input + min(k, C) channels per stage


def test_plot_series_and_activation_curves():
    ax = viz.plot_series({"a": ([1, 2, 3], [1e-3, 1e-2, 1e-1]), "b": ([1, 2, 3], [1, 1, 1])}, logy=True)
    assert ax.get_yscale() == "log" and len(ax.lines) == 2
    value_ax, _grad_ax = viz.plot_activation_curves(activation_curves())
    assert len(value_ax.lines) == len(activation_curves()) + 2  # curves plus the two axis lines


def test_multilabel_summary_counts_unclaimed_and_contested_pixels():
    onehot = np.zeros((3, 2, 3), int)
    onehot[0, 0, 0] = 1  # background only
    onehot[1, 0, 1] = 1  # class 1 only
    onehot[1, 0, 2] = onehot[2, 0, 2] = 1  # two classes
    onehot[2, 1, 0] = 1  # class 2 only
    labels, none, several = viz.multilabel_summary(onehot)
    np.testing.assert_array_equal(labels, [[0, 1, 0], [2, 0, 0]])
    np.testing.assert_array_equal(none, [[False, False, False], [False, True, True]])
    np.testing.assert_array_equal(several, [[False, False, True], [False, False, False]])


def test_compare_decodings_reports_conflicts_in_the_title():
    target = np.zeros((10, 10), int)
    target[3:6, 3:6] = 1
    onehot = np.zeros((2, 10, 10), int)
    onehot[0] = 1 - target
    onehot[1] = target
    onehot[0, 3, 3] = 1  # one contested pixel
    onehot[0, 0, 0] = 0  # one unclaimed pixel
    axes = viz.compare_decodings(np.zeros((10, 10)), target, target, onehot, ("background", "x"), zoom=1)
    assert "1 px no label, 1 px several" in axes[2].get_title()
    assert axes[2].images[0].get_array().shape == (7, 7)  # zoom: corner pixel (0, 0) to target + 1
