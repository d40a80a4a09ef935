"""Use a trained checkpoint: score it per patient, draw overlays, segment new images and volumes.

Prediction repeats the training preprocessing stored with the checkpoint (normalisation, resizing)
and undoes the resizing (nearest-neighbour for labels), so the output lies on the input's grid. A
checkpoint written by the trainer stores its config and the dataset's description, so prediction
needs neither the dataset registry nor the code that made the dataset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .activations import label_map
from .config import Config
from .data._io import READERS, luma, read_image_slice
from .data.errors import DataError
from .data.folder import to_channels, without_alpha
from .data.preprocess import normalize_case, pad_or_crop, resize_slices, resized_shape, stack_context
from .data.registry import dataset_info
from .data.splits import load_split, patient_split
from .data.types import Case, DatasetInfo, SliceTable
from .data.volumes import VolumeTable, pad_volume
from .device import autocast, channels_last_format, select_device
from .files import atomic_write
from .metrics import per_patient_scores, summarize_scores
from .models import load_checkpoint, normalize_input

__all__ = ["Predictor", "evaluate", "predict", "predict_folder", "predict_nifti", "save_overlays"]


def _forward(model: nn.Module, x: torch.Tensor, device: torch.device, normalize: Callable | None,
             amp_dtype: torch.dtype | None, channels_last: bool) -> torch.Tensor:
    """The model's logits for ``x``, fed as in training (memory format, autocast, input normalisation)."""
    if channels_last:
        x = x.contiguous(memory_format=channels_last_format(x.ndim))
    with autocast(device, amp_dtype):
        return model(normalize(x) if normalize else x)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, mode: str, device: torch.device, batch_size: int = 16,
            normalize=None, amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> np.ndarray:
    """Label maps ``(N, H, W)`` (uint8) for prepared slices ``(N, C, H, W)``; the model is put in eval mode.

    The one inference path: validation during training, :func:`evaluate` and :class:`Predictor`
    all call it. Used in chapters 8 and 10.
    """
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)).to(device)
        logits = _forward(model, x, device, normalize, amp_dtype, channels_last)
        out.append(label_map(logits, mode).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[2:]), np.uint8)


@torch.no_grad()
def predict_volume(model: nn.Module, image: np.ndarray, mode: str, device: torch.device, roi: Sequence[int],
                   batch_size: int = 4, normalize=None, amp_dtype: torch.dtype | None = None,
                   channels_last: bool = False) -> np.ndarray:
    """Label volume ``(S, H, W)`` (uint8) of a 3-D model for one normalised volume ``image`` (C, S, H, W).

    MONAI's ``sliding_window_inference`` runs windows of ``roi`` = (D, H, W) (the training patch),
    overlapping by a quarter, and averages the logits where they overlap. A volume smaller than the
    window is padded like the training patches (:func:`~medseg_tutorial.data.volumes.pad_volume`),
    and the labels are cut back to its own voxels. Used in chapter 10.
    """
    from monai.inferers import sliding_window_inference  # MONAI takes seconds to import: only for 3-D

    model.eval()
    padded, _, inner = pad_volume(image, None, roi)
    x = torch.from_numpy(np.ascontiguousarray(padded[None], np.float32)).to(device)

    def logits_of(window: torch.Tensor) -> torch.Tensor:
        return _forward(model, window, device, normalize, amp_dtype, channels_last).float()

    logits = sliding_window_inference(x, tuple(roi), batch_size, logits_of, overlap=0.25)
    return label_map(logits, mode)[0].to(torch.uint8).cpu().numpy()[inner]


@dataclass
class Predictor:
    """A model from :func:`load_checkpoint` plus everything needed to feed it like in training. Used in chapter 8."""

    model: nn.Module
    meta: dict[str, Any]
    device: torch.device
    mode: str  # "binary" or "multiclass": how logits become labels
    size: tuple[int, int] | None  # (H, W) the model was trained at; None if unknown
    config: dict[str, Any] = field(default_factory=dict)  # the training config, if stored

    @property
    def dims(self) -> int:
        """2 for slices, 3 for volumes (``model.dims`` of the stored config)."""
        return int(self.meta["config"].get("dims", 2))

    @property
    def context(self) -> int:
        """2.5-D: neighbouring slices on each side that go in as channels (``data.context``)."""
        return int(self.config.get("data", {}).get("context", 0))

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, device: str = "auto") -> Predictor:
        model, meta = load_checkpoint(checkpoint)
        device_ = select_device(device)
        extra = meta.get("extra", {})
        config = extra.get("config", {})
        mode = extra.get("loss_mode") or ("binary" if meta["config"]["classes"] == 1 else "multiclass")
        size = extra.get("size") or config.get("data", {}).get("size")
        return cls(model.to(device_).eval(), meta, device_, mode, tuple(size) if size else None, config)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def dataset(self) -> str | None:
        return self.meta.get("provenance", {}).get("dataset")

    @property
    def dataset_info(self) -> DatasetInfo:
        """The training data's description: stored in the checkpoint, else (older checkpoints) from the registry."""
        stored = self.meta.get("extra", {}).get("dataset_info")
        if stored:
            return DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
        return dataset_info(self.dataset)

    def normalization(self) -> tuple[str, dict[str, Any]]:
        """(normaliser, options) the training slices were prepared with (``data.normalizer`` of the stored config)."""
        dc = Config.from_dict(self.config, resolve=False).data
        if dc.normalizer is not None:
            return dc.normalization(None)
        info = self.dataset_info  # a checkpoint from before data.normalizer: the modality's default
        method, params = dc.normalization(info)
        return method, params if method == "ct_window" and info.has_raw_hu else {}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The input normalisation stored in the checkpoint (identity for ``input_norm: none``)."""
        norm = self.meta["normalization"]
        return normalize_input(x, tuple(norm["mean"]), tuple(norm["std"]))

    def predict_prepared(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Labels (N, H, W) for slices already prepared like the training table (normalised, resized)."""
        return predict(self.model, images, self.mode, self.device, batch_size, self.normalize)

    def __call__(self, image: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Labels (S, H, W) for native slices ``image`` (S, C, H, W) of one volume (raw intensities, any size)."""
        image = self._match_channels(np.asarray(image, np.float32))
        if self.dataset is None or self.size is None:
            raise ValueError("the checkpoint does not store its dataset and training size (it was not written "
                             "by the trainer); prepare the slices yourself and use predict_prepared")
        # the intensity normalisation of the training data (CT window, 8-bit scaling, MRI z-score, ...)
        options = self.config.get("data", {}).get("options", {})
        method, kw = self.normalization()
        image = normalize_case(Case("input", image, None), self.dataset_info, method, **kw).image
        if self.dims == 3:  # the whole native volume, channel-first, through the sliding window
            patch = self.config["data"]["patch"]
            return predict_volume(self.model, image.transpose(1, 0, 2, 3), self.mode, self.device, patch,
                                  batch_size, self.normalize)  # batch_size windows per forward pass
        hw = image.shape[-2:]
        mode = options.get("resize_mode", "letterbox")
        crop = self.config.get("data", {}).get("crop")
        prepared, _, _ = resize_slices(image, None, self.size, mode=mode, crop=crop)
        labels = self.predict_prepared(stack_context(prepared, self.context), batch_size)
        if crop is None:
            return restore_size(labels, hw, self.size, mode)
        # undo the resize to the cropped field of view, then put it back in the middle of the slice:
        # outside the crop the model saw nothing, so it is background
        return pad_or_crop(restore_size(labels, tuple(crop), self.size, mode), hw, 0)

    def _match_channels(self, image: np.ndarray) -> np.ndarray:
        """Repeat a grey channel for an RGB model, or take the ITU-R 601 luma of colour (alpha dropped) for a grey one."""
        # a 2.5-D model takes 2 k + 1 slices of the image's channels (stacked after preprocessing)
        wanted, have = self.meta["config"]["in_channels"] // (2 * self.context + 1), image.shape[1]
        if have == wanted:
            return image
        if have == 1:
            return np.repeat(image, wanted, axis=1)
        if wanted == 1 and have in (3, 4):  # ITU-R 601 luma, alpha dropped
            return luma(image)
        raise ValueError(f"the model takes {wanted} channels, the image has {have}")


def restore_size(labels: np.ndarray, hw: tuple[int, int], size: tuple[int, int], mode: str = "letterbox") -> np.ndarray:
    """Undo ``resize_slices(..., size, mode)`` for label maps (S, h, w) -> (S, H, W) = ``hw``.

    The padding that letterboxing added is cut away, then labels are resampled nearest-neighbour
    (pixel centres), so no in-between label values appear.
    """
    h, w = int(hw[0]), int(hw[1])
    inner = resized_shape((h, w), size, mode)
    labels = pad_or_crop(labels, inner, 0)  # the centred region that held the image
    if inner != (h, w):
        t = torch.from_numpy(np.ascontiguousarray(labels[:, None], np.uint8))
        labels = F.interpolate(t, size=(h, w), mode="nearest-exact")[:, 0].numpy()
    return labels.astype(np.uint8, copy=False)


def evaluate(checkpoint: str | os.PathLike, data: Config | SliceTable | None = None,
             split: str | Sequence[str] = "test", *, device: str = "auto", batch_size: int = 32,
             slice_spacing: float | None = None, grid: str = "native", hd95: bool = True,
             root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Score ``checkpoint`` per patient and class on one split.

    ``grid="native"`` (the default, what every results table reports) predicts every slice of each
    raw volume of the split and scores it on the volume's own voxels: see :func:`evaluate_volumes`.
    ``grid="prepared"`` scores the prepared slices of a :class:`SliceTable` (the training grid, empty
    slices dropped by ``keep_empty`` stay dropped): quick, for teaching, never for reporting; not for
    3-D checkpoints. ``data``: a :class:`Config`, a prepared :class:`SliceTable`, or ``None`` for the
    config stored in the checkpoint. ``split``: ``"train"``, ``"val"``, ``"test"``, ``"all"`` or a list
    of patient ids, read from ``split.json`` beside the checkpoint when it exists. ``slice_spacing``
    (mm between slices, prepared grid): when given, HD95 is computed.

    Returns one row per patient x foreground class: ``patient_id, class, class_name, dice, iou,
    [hd95], tp, fp, fn``, with :func:`summarize_scores` in ``attrs["summary"]`` and the mean
    foreground Dice in ``attrs["mean_dice"]``. Used in chapter 8.
    """
    if grid == "native":
        if isinstance(data, SliceTable):
            raise ValueError("grid='native' reads the raw volumes; pass a Config (or None), or use grid='prepared'")
        return evaluate_volumes(checkpoint, data, split, device=device, batch_size=batch_size, hd95=hd95, root=root)
    if grid != "prepared":
        raise ValueError(f"grid must be 'native' or 'prepared', got {grid!r}")
    predictor = Predictor.load(checkpoint, device)
    if predictor.dims == 3:
        raise ValueError(f"{checkpoint} is a 3-D model: it is scored on the native volumes (grid='native')")
    if data is None:
        if not predictor.config:
            raise ValueError(f"{checkpoint} stores no training config; pass a Config or a SliceTable")
        data = stored_config(predictor)
    table = data if isinstance(data, SliceTable) else data.data.prepare()
    if table.info.num_classes != len(predictor.class_names):
        raise ValueError(f"the checkpoint has classes {predictor.class_names}, the data {table.info.class_names}")

    patients = _split_patients(table, split, checkpoint, data if isinstance(data, Config) else None, predictor)
    rows = table.rows_for(patients)
    if len(rows) == 0:
        raise ValueError(f"no slices for split {split!r} in dataset {table.info.name!r}")
    preds = predictor.predict_prepared(table.images[rows], batch_size)
    scores = per_patient_scores(
        preds, table.masks[rows], table.patient_ids[rows], table.info.num_classes,
        spacing=table.spacing[rows] if slice_spacing is not None else None, slice_index=table.slice_index[rows],
        class_names=table.info.class_names, slice_spacing=slice_spacing,
    )
    summary = summarize_scores(scores)
    scores.attrs.update(summary=summary, mean_dice=summary.attrs["mean_dice"], split=split if isinstance(split, str)
                        else "custom", checkpoint=str(checkpoint), eval_slices="kept", eval_grid="prepared")
    return scores


def evaluate_volumes(checkpoint: str | os.PathLike, cfg: Config | None = None,
                     split: str | Sequence[str] = "test", *, device: str = "auto", batch_size: int = 32,
                     hd95: bool = True, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Score ``checkpoint`` on the split's volumes: all slices, native grid, 3-D metrics in mm.

    Each volume (a :class:`Case`: a patient, or a patient's phase such as ACDC's ED and ES) is
    predicted whole and scored in 3-D at its own spacing, as MONAI and nnU-Net report them. Returns
    one row per volume x foreground class (``patient_id, volume, class, class_name, dice, iou,
    [hd95], tp, fp, fn, slices, voxels``); ``attrs`` as :func:`per_patient_summary` sets them.
    """
    predictor = Predictor.load(checkpoint, device)
    if cfg is None:
        if not predictor.config:
            raise ValueError(f"{checkpoint} stores no training config; pass its Config")
        cfg = stored_config(predictor)
    dataset = cfg.data.source(root)
    info = dataset.info
    if info.num_classes != len(predictor.class_names):
        raise ValueError(f"the checkpoint has classes {predictor.class_names}, the data {info.class_names}")
    wanted = set(_split_patients(None, split, checkpoint, cfg, predictor))
    frames = []
    for case in dataset.cases():
        if case.patient_id not in wanted:
            continue
        if case.mask is None:
            raise ValueError(f"{case.source}: volume {case.patient_id} has no labels to score against")
        labels = predictor(case.image, batch_size)  # 2-D: slice by slice; 3-D: sliding window
        volume = f"{case.patient_id}/{case.group}" if case.group else case.patient_id
        frames.append(volume_rows(labels, case.mask, case.patient_id, volume, info,
                                  tuple(case.spacing) if hd95 else None))
    if not frames:
        raise ValueError(f"no volumes of split {split!r} found in dataset {cfg.data.dataset!r}")
    scores = per_patient_summary(frames)
    scores.attrs.update(split=split if isinstance(split, str) else "custom", checkpoint=str(checkpoint),
                        eval_slices="all", eval_grid="native")
    return scores


def volume_rows(labels: np.ndarray, mask: np.ndarray, patient_id: str, volume: str, info: DatasetInfo,
                spacing: Sequence[float] | None = None) -> pd.DataFrame:
    """3-D scores of one predicted volume (S, H, W): one row per foreground class, HD95 in mm with ``spacing``."""
    scores = per_patient_scores(labels, mask, [volume] * len(labels), info.num_classes, spacing=spacing,
                                class_names=info.class_names)
    scores = scores.rename(columns={"patient_id": "volume"})
    scores.insert(0, "patient_id", patient_id)
    scores["slices"], scores["voxels"] = len(labels), int(mask.size)
    return scores


def per_patient_summary(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The rows of :func:`volume_rows`, with a patient's volumes averaged and summarised in ``attrs``.

    ``attrs["per_patient"]``: one row per patient and class; ``attrs["summary"]``: its
    :func:`summarize_scores`; ``attrs["mean_dice"]``: the mean foreground Dice over patients.
    Used in chapter 10.
    """
    scores = pd.concat(frames, ignore_index=True)
    metric_cols = [c for c in ("dice", "iou", "hd95") if c in scores]
    per_patient = scores.groupby(["patient_id", "class", "class_name"], as_index=False, sort=False)[metric_cols].mean()
    summary = summarize_scores(per_patient)
    scores.attrs.update(summary=summary, mean_dice=summary.attrs["mean_dice"], per_patient=per_patient)
    return scores


def _split_patients(
    table: SliceTable | None, split: str | Sequence[str], checkpoint: str | os.PathLike, cfg: Config | None,
    predictor: Predictor,
) -> list[str]:
    if not isinstance(split, str):
        return [str(p) for p in split]
    if split == "all":
        if table is None:
            table = _training_table(cfg if cfg is not None else stored_config(predictor))
        return table.patients
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val, test, all or a list of patient ids, got {split!r}")
    saved = Path(checkpoint).parent / "split.json"
    if saved.is_file():
        return list(getattr(load_split(saved), split))
    if cfg is None and predictor.config:
        cfg = stored_config(predictor)
    if cfg is not None and cfg.data.split_file:
        return list(getattr(load_split(cfg.data.split_file), split))
    fractions, seed = (cfg.data.fractions, cfg.data.seed) if cfg is not None else ((0.7, 0.15, 0.15), 0)
    if table is None:
        table = _training_table(cfg)  # the same patients the split was drawn from in training
    return list(getattr(patient_split(table.patient_ids, fractions, seed=seed), split))


def _training_table(cfg: Config) -> SliceTable | VolumeTable:
    """What ``cfg`` trains on: prepared slices, or (3-D) the native volumes."""
    return cfg.data.volumes() if cfg.model.dims == 3 else cfg.data.prepare()


def stored_config(predictor: Predictor) -> Config:
    """The checkpoint's training config, resolved, with ``data.rebuild`` off (data are prepared once)."""
    cfg = Config.from_dict(predictor.config)
    cfg.data.rebuild = False
    return cfg


_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def save_overlays(images: np.ndarray, masks: np.ndarray, preds: np.ndarray, path: str | os.PathLike,
                  n: int = 8, channel: int = 0, class_names: Sequence[str] | None = None,
                  title: str | None = None) -> Path:
    """Save ``n`` rows of image | truth | prediction as one PNG; returns the path.

    ``images`` (N, C, H, W) or (N, H, W). Rows are spread evenly over the slices that show any
    foreground in truth or prediction, topped up with empty slices when there are fewer than ``n``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    images = np.asarray(images)
    images = images[:, channel] if images.ndim == 4 else images
    masks, preds = np.asarray(masks), np.asarray(preds)
    if not (len(images) == len(masks) == len(preds)) or images.shape[-2:] != masks.shape[-2:] != preds.shape[-2:]:
        raise ValueError(f"shapes differ: images {images.shape}, masks {masks.shape}, preds {preds.shape}")
    picks = _pick_slices(masks, preds, n)
    n_classes = max(int(max(masks.max(initial=0), preds.max(initial=0))) + 1, len(class_names or ()))
    cmap = ListedColormap(_COLOURS[: max(1, n_classes - 1)])

    # the object-oriented API: no pyplot state, no global backend switch (safe inside notebooks)
    fig = Figure(figsize=(7.5, 2.5 * len(picks)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picks), 3, squeeze=False)
    for row, i in zip(axes, picks):
        for ax, labels, label in zip(row, (None, masks[i], preds[i]), ("image", "truth", "prediction")):
            ax.imshow(images[i], cmap="gray", interpolation="nearest")
            if labels is not None:
                shown = np.ma.masked_equal(labels, 0)  # background stays transparent
                ax.imshow(shown - 1, cmap=cmap, vmin=0, vmax=max(1, n_classes - 2), alpha=0.5,
                          interpolation="nearest")
            ax.set_title(f"{label} (slice {i})", fontsize=9)
            ax.axis("off")
    if class_names is not None:
        handles = [Patch(color=_COLOURS[(c - 1) % len(_COLOURS)], label=class_names[c]) for c in range(1, len(class_names))]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _pick_slices(masks: np.ndarray, preds: np.ndarray, n: int) -> list[int]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shown = np.flatnonzero((masks.reshape(len(masks), -1) > 0).any(1) | (preds.reshape(len(preds), -1) > 0).any(1))
    if len(shown) < n:
        empty = np.setdiff1d(np.arange(len(masks)), shown)
        shown = np.sort(np.concatenate([shown, empty[: n - len(shown)]]))
    if len(shown) > n:
        shown = shown[np.unique(np.linspace(0, len(shown) - 1, n).round().astype(int))]
    return shown.tolist()


def _read_image(path: Path) -> np.ndarray:
    """A 2-D image file as float32 (1, C, H, W), read as the ``folder`` dataset reads training images
    (an alpha channel dropped)."""
    image = read_image_slice(path)
    return to_channels(image, without_alpha(image.shape[1]), path)


def predict_folder(checkpoint: str | os.PathLike, folder: str | os.PathLike, out_dir: str | os.PathLike, *,
                   device: str = "auto", exclude: str | None = None, batch_size: int = 32) -> list[Path]:
    """Segment every PNG/JPEG/TIFF/BMP in ``folder``; write ``out_dir/<name>.png`` label maps (uint8).

    Files whose stem ends with ``exclude`` (masks beside their images), optionally plus ``_N`` (one
    mask per object), are skipped; ``None`` means the mask suffix of the model's ``folder`` dataset,
    else ``_mask``. Each image is normalised on its own: MRI z-scoring is then per slice, not per
    volume as in training, so expect slightly different intensities.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    predictor = Predictor.load(checkpoint, device)
    if exclude is None:
        exclude = (predictor.config.get("data", {}).get("folder") or {}).get("mask_suffix") or "_mask"
    skip = re.compile(rf".*{re.escape(exclude)}(?:_\d+)?") if exclude else None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in READERS
                   and not (skip and skip.fullmatch(p.stem)))
    if not files:
        raise FileNotFoundError(f"no {'/'.join(READERS)} images in {folder}")
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path in files:  # a damaged file is reported, and every other file is still segmented
        try:
            labels = predictor(_read_image(path), batch_size)[0]
        except DataError as err:
            failed.append(err)
            continue
        out = out_dir / f"{path.stem}.png"
        with atomic_write(out) as f:
            Image.fromarray(labels.astype(np.uint8)).save(f, format="PNG")
        written.append(out)
    if failed:
        raise DataError(failed[0].path, f"{failed[0].message}; {len(failed)} of {len(files)} images could not be "
                        f"read, the other {len(written)} label maps are in {out_dir}", "unreadable")
    return written


def predict_nifti(checkpoint: str | os.PathLike, in_path: str | os.PathLike, out_path: str | os.PathLike, *,
                  device: str = "auto", batch_size: int = 32) -> Path:
    """Segment a NIfTI volume slice by slice (along its last axis); write a uint8 label volume.

    The output has the input's shape (x, y, z) and affine, so viewers overlay it on the input.
    Used in chapter 8.
    """
    import nibabel as nib

    from .data._io import read_nifti_image

    in_path, out_path = Path(in_path), Path(out_path)
    image, _ = read_nifti_image(in_path)  # (S, C, H, W): slices along z, rows = y, cols = x
    labels = Predictor.load(checkpoint, device)(image, batch_size)
    source = nib.load(in_path)
    volume = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)  # back to (x, y, z)
    out = nib.Nifti1Image(volume, source.affine)
    out.set_qform(source.affine, code=int(source.header["qform_code"]) or 1)
    out.set_sform(source.affine, code=int(source.header["sform_code"]) or 1)
    out.header.set_xyzt_units(*source.header.get_xyzt_units())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, out_path)
    return out_path
