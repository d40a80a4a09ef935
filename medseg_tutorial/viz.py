"""Plot helpers of the book: images, label overlays, feature maps, activation and gradient curves.

A leaf module (layer 0): it imports only numpy, matplotlib and torch, so every chapter and every
other module may use it. Every function draws into an ``ax`` (or a new figure when none is given)
and returns what it drew on, so a chapter can add titles or save the figure.

Conventions: images are channel-first ``(C, H, W)`` or plain ``(H, W)`` arrays or tensors (the
layout of ``Case`` and ``SliceTable``); label maps are integer ``(H, W)`` arrays whose value indexes
``class_names`` (0 is background and is never coloured).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap, to_rgba
from matplotlib.patches import Patch

__all__ = [
    "compare_decodings",
    "multilabel_summary",
    "overlay",
    "plot_activation_curves",
    "plot_feature_maps",
    "plot_series",
    "show_examples",
    "show_images",
]

# Colours of the foreground classes 1, 2, 3, ... (Okabe-Ito palette: distinguishable with the
# common forms of colour blindness, and visible on a grey-level scan).
CLASS_COLORS: tuple[str, ...] = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
NO_LABEL_COLOR = "#FF00FF"  # magenta: a pixel no class claims (multilabel decoding)
SEVERAL_LABELS_COLOR = "#FFFFFF"  # white: a pixel several classes claim


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def as_image(image: Any, channel: int | None = None) -> np.ndarray:
    """A 2-D float array to display from ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` input.

    ``channel`` picks one channel of a multi-channel image (default: the first; e.g. ``channel=1``
    is FLAIR in the LGG data). An ``(H, W, 3)`` uint8 photograph is returned unchanged.
    """
    arr = _numpy(image)
    if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
        return arr
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr[channel or 0]
    if arr.ndim != 2:
        raise ValueError(f"cannot display an array of shape {arr.shape} as an image")
    return arr.astype(np.float32)


def label_colors(num_classes: int) -> ListedColormap:
    """Colour map of a label map: class 0 transparent, class k the k-th :data:`CLASS_COLORS` entry."""
    colors = [(0.0, 0.0, 0.0, 0.0)] + [
        to_rgba(CLASS_COLORS[(k - 1) % len(CLASS_COLORS)]) for k in range(1, num_classes)
    ]
    return ListedColormap(colors)


def _new_ax(ax: Any, figsize: tuple[float, float] = (4.0, 4.0)) -> Any:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def class_legend(
    ax: Any,
    class_names: Sequence[str],
    loc: str = "lower right",
    extra: Mapping[str, str] | None = None,
    fontsize: str = "x-small",
) -> None:
    """Add a legend with one coloured patch per foreground class (and ``extra`` label -> colour)."""
    handles = [
        Patch(color=CLASS_COLORS[(k - 1) % len(CLASS_COLORS)], label=name)
        for k, name in enumerate(class_names)
        if k > 0
    ]
    handles += [
        Patch(facecolor=color, edgecolor="black", label=label) for label, color in (extra or {}).items()
    ]
    if handles:
        ax.legend(handles=handles, loc=loc, fontsize=fontsize, framealpha=0.7)


def overlay(
    image: Any,
    mask: Any = None,
    ax: Any = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.45,
    channel: int | None = None,
    title: str | None = None,
    legend: bool = True,
    contour: bool = False,
) -> Any:
    """Show ``image`` in grey with the label map ``mask`` in colour on top (background left clear).

    ``contour=True`` draws only the outline of each class, which keeps the anatomy underneath
    visible. Returns the axes.

    Used in chapter 2.
    """
    ax = _new_ax(ax)
    img = as_image(image, channel)
    ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
    if mask is not None:
        labels = _numpy(mask).astype(int)
        n = max(int(labels.max()) + 1, len(class_names or ()), 2)
        if contour:
            for k in range(1, n):
                if (labels == k).any():
                    ax.contour(
                        labels == k,
                        levels=[0.5],
                        colors=[CLASS_COLORS[(k - 1) % len(CLASS_COLORS)]],
                        linewidths=1.2,
                    )
        else:
            ax.imshow(
                np.ma.masked_equal(labels, 0),
                cmap=label_colors(n),
                vmin=0,
                vmax=n - 1,
                alpha=alpha,
                interpolation="nearest",
            )
        if legend and class_names:
            class_legend(ax, class_names)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize="small")
    return ax


def show_examples(
    examples: Sequence[Mapping[str, Any]], ncols: int | None = None, size: float = 3.2, alpha: float = 0.45
) -> Any:
    """A row (or grid) of overlays. Each example is a mapping with ``image``, ``mask`` and optionally
    ``title``, ``class_names``, ``channel``, ``caption`` (small text under the panel, e.g. a licence).

    Returns the figure.

    Used in chapters 1 and 8.
    """
    n = len(examples)
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, ex in zip(axes.flat, examples):
        overlay(
            ex["image"],
            ex.get("mask"),
            ax=ax,
            class_names=ex.get("class_names"),
            channel=ex.get("channel"),
            title=ex.get("title"),
            alpha=alpha,
        )
        if ex.get("caption"):
            ax.text(
                0.5,
                -0.03,
                ex["caption"],
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=6.5,
                wrap=True,
            )
    fig.tight_layout()
    return fig


def show_images(
    images: Sequence[Any],
    titles: Sequence[str] | None = None,
    cmaps: Sequence[str] | str = "gray",
    symmetric: Sequence[bool] | bool = False,
    colorbar: bool = False,
    size: float = 3.0,
    channel: int | None = None,
) -> Any:
    """Images side by side. ``symmetric=True`` centres the colour scale on 0 (for filter responses
    and feature maps, whose sign matters). Returns the figure.

    Used in chapter 2.
    """
    n = len(images)
    cmaps = [cmaps] * n if isinstance(cmaps, str) else list(cmaps)
    symmetric = [symmetric] * n if isinstance(symmetric, bool) else list(symmetric)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    for i, (ax, image) in enumerate(zip(axes[0], images)):
        img = as_image(image, channel)
        lim = float(np.abs(img).max()) or 1.0
        kw = {"vmin": -lim, "vmax": lim} if symmetric[i] else {}
        handle = ax.imshow(img, cmap=cmaps[i], interpolation="nearest", **kw)
        if colorbar:
            fig.colorbar(handle, ax=ax, fraction=0.046, pad=0.04)
        if titles:
            ax.set_title(titles[i], fontsize="small")
        ax.set_axis_off()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Feature maps
# ------------------------------------------------------------------------------------------------


def top_channels(feature: Any, k: int = 6) -> np.ndarray:
    """Indices of the ``k`` channels of a ``(C, h, w)`` (or ``(1, C, h, w)``) feature map with the largest
    spatial standard deviation: the ones that respond to structure rather than being flat."""
    arr = _numpy(feature)
    if arr.ndim == 4:
        arr = arr[0]
    spread = arr.reshape(arr.shape[0], -1).std(axis=1)
    return np.argsort(spread)[::-1][: min(k, arr.shape[0])]


def plot_feature_maps(
    features: Sequence[Any],
    names: Sequence[str] | None = None,
    k: int = 6,
    image: Any = None,
    size: float = 1.5,
    title: str | None = None,
) -> Any:
    """One row per stage: the ``k`` most structured channels (:func:`top_channels`) of each feature map.

    ``features`` is a list of ``(1, C, h, w)`` tensors, e.g. what an smp encoder returns; ``image``,
    if given, is drawn at the start of the first row. Each row is labelled with its stage name, the
    number of channels and the spatial size. Returns the figure.

    Used in chapter 2.
    """
    extra = 1 if image is not None else 0  # column of the input image
    label_w = 0.7  # width of the column holding the row labels, relative to a map
    ratios = [1.0] * extra + [label_w] + [1.0] * k
    fig, axes = plt.subplots(
        len(features),
        len(ratios),
        figsize=(size * sum(ratios), 1.12 * size * len(features) + 0.4),
        squeeze=False,
        gridspec_kw={"wspace": 0.05, "hspace": 0.25, "width_ratios": ratios},
    )
    for ax in axes.flat:
        ax.set_axis_off()
    if image is not None:
        axes[0, 0].imshow(as_image(image), cmap="gray")
        axes[0, 0].set_title("input", fontsize="x-small")
    for row, feature in enumerate(features):
        arr = _numpy(feature)
        arr = arr[0] if arr.ndim == 4 else arr
        label = names[row] if names else f"stage {row}"
        axes[row, extra].text(
            0.95,
            0.5,
            f"{label}\n{arr.shape[0]} x {arr.shape[1]} x {arr.shape[2]}",
            transform=axes[row, extra].transAxes,
            ha="right",
            va="center",
            fontsize=7,
        )
        for col, c in enumerate(top_channels(arr, k)):
            ax = axes[row, extra + 1 + col]
            ax.imshow(arr[c], cmap="viridis", interpolation="nearest")
            ax.set_title(f"ch {c}", fontsize="xx-small", pad=2)
    if title:
        fig.suptitle(title, fontsize="small")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92 if title else 0.97, bottom=0.02)
    return fig


# ------------------------------------------------------------------------------------------------
# Curves
# ------------------------------------------------------------------------------------------------


def plot_series(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    logy: bool = False,
    ax: Any = None,
    marker: str | None = "o",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """Line plot of ``{label: (x, y)}``; ``styles`` maps a label to extra ``ax.plot`` keywords. Returns the axes.

    Used in chapter 2.
    """
    ax = _new_ax(ax, (6.0, 3.6))
    for label, (x, y) in series.items():
        kw = {"marker": marker, "markersize": 3, **(styles or {}).get(label, {})}
        ax.plot(_numpy(x), _numpy(y), label=label, **kw)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="small")
    return ax


def plot_activation_curves(curves: Mapping[str, Any], axes: Any = None) -> Any:
    """Values (left) and derivatives (right) of activation functions.

    ``curves`` maps a name to an object with ``x``, ``value`` and ``gradient`` arrays, e.g. what
    ``medseg_tutorial.activations.activation_curves()`` returns. Returns the two axes.

    Used in chapter 5.
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    value_ax, grad_ax = axes
    dashes = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    for i, (name, c) in enumerate(curves.items()):
        kw = {
            "label": name,
            "ls": dashes[i % len(dashes)],
            "lw": max(2.6 - 0.4 * i, 1.0),
        }  # overlapping curves stay visible
        value_ax.plot(_numpy(c.x), _numpy(c.value), **kw)
        grad_ax.plot(_numpy(c.x), _numpy(c.gradient), **kw)
    value_ax.set_title("activation f(x)", fontsize="small")
    grad_ax.set_title("derivative f'(x): what backpropagation multiplies by", fontsize="small")
    for ax in axes:
        ax.axhline(0, color="black", lw=0.6)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel("pre-activation x")
        ax.grid(alpha=0.3)
    value_ax.legend(fontsize="small")
    value_ax.figure.tight_layout()
    return axes


# ------------------------------------------------------------------------------------------------
# Output activations: softmax arg-max versus per-class sigmoid thresholds
# ------------------------------------------------------------------------------------------------


def multilabel_summary(onehot: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse a multilabel decoding ``(K, H, W)`` of 0/1 channels (class 0 = background) into
    ``(labels, none, several)``: the label map where exactly one channel is on (0 elsewhere), and
    boolean maps of the pixels no channel claims and of those several channels claim.

    Used in chapter 5.
    """
    on = _numpy(onehot).astype(bool)
    if on.ndim != 3:
        raise ValueError(f"expected (K, H, W) channels, got shape {on.shape}")
    count = on.sum(axis=0)
    labels = np.where(count == 1, on.argmax(axis=0), 0)
    return labels, count == 0, count > 1


def compare_decodings(
    image: Any,
    target: Any,
    multiclass_labels: Any,
    multilabel_onehot: Any,
    class_names: Sequence[str],
    axes: Any = None,
    size: float = 3.0,
    zoom: int | None = None,
) -> Any:
    """Three panels: the reference, the softmax arg-max labels and the per-class sigmoid labels, the
    latter with pixels claimed by no class (magenta) and by several classes (white) marked.
    ``zoom=m`` crops all panels to the box around every labelled or marked pixel plus ``m`` pixels.
    Returns the axes.

    Used in chapter 5.
    """
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(3 * size, size + 0.4))
    labels, none, several = multilabel_summary(multilabel_onehot)
    image, target, mc = as_image(image), _numpy(target), _numpy(multiclass_labels)
    if zoom is not None:
        rows, cols = np.nonzero((target > 0) | (mc > 0) | (labels > 0) | none | several)
        if len(rows):
            box = (
                slice(max(rows.min() - zoom, 0), rows.max() + zoom + 1),
                slice(max(cols.min() - zoom, 0), cols.max() + zoom + 1),
            )
            image, target, mc, labels, none, several = (
                a[box] for a in (image, target, mc, labels, none, several)
            )
    multiclass_labels = mc
    overlay(image, target, ax=axes[0], class_names=class_names, title="reference")
    overlay(image, multiclass_labels, ax=axes[1], legend=False, title="softmax + arg-max")
    overlay(
        image,
        labels,
        ax=axes[2],
        legend=False,
        title=f"sigmoid > 0.5 per class\n{int(none.sum())} px no label, {int(several.sum())} px several",
    )
    marks = np.zeros((*none.shape, 4))
    marks[none] = to_rgba(NO_LABEL_COLOR, 0.8)
    marks[several] = to_rgba(SEVERAL_LABELS_COLOR, 0.8)  # slightly see-through: the anatomy stays visible
    axes[2].imshow(marks, interpolation="nearest")
    class_legend(
        axes[2], class_names, extra={"no label": NO_LABEL_COLOR, "several labels": SEVERAL_LABELS_COLOR}
    )
    axes[0].figure.tight_layout()
    return axes
