"""Augmentation on the training device: the prepared slices live on the GPU, batches never touch the CPU.

The datasets of this book are small once prepared (2-D slices of 64-256 pixels), so the whole
training split fits in GPU memory. Storing it there and augmenting whole batches with a few
vectorised tensor operations removes the per-slice albumentations calls and the host-to-device
copies that otherwise bound the speed of a small model on a fast GPU.

* :class:`DeviceAugment` mirrors :func:`.torch_data.train_transform` for the same ``strength``
  (the presets are read from the same table, so the two cannot drift apart): horizontal flip
  (``p=0.5``), vertical flip (``"medium"`` only), an affine with ``p=0.7`` (rotation, independent
  x and y scaling, whole-pixel translation for ``"medium"``; bilinear for the image, nearest for the
  mask, constant ``fill`` / background outside), then :class:`.torch_data.ScaleShiftIntensity`'s
  contrast/brightness change with ``p=0.5`` (no clipping: z-scored MRI is negative). The affine
  matrix is albumentations' own (rotation about the image centre, same sign), expressed as an
  ``F.affine_grid`` theta. It works on any device, CPU included, which is how CI tests it.
* :class:`DeviceBatchIterator` holds the rows of a :class:`~.types.SliceTable` as device tensors
  and yields batches like the CPU loader (same keys; the same sample order for the same seed and
  epoch, since it uses the same ``DistributedSampler`` permutation), augmenting with a generator
  on the device seeded from (seed, epoch, rank) by :meth:`~DeviceBatchIterator.set_epoch`.

Differences from the CPU pipeline, all deliberate:

* Random numbers come from a torch generator, not albumentations' Python RNG: the two pipelines
  follow the same *distributions* but never produce the same image for the same seed (and a CUDA
  generator draws different numbers from a CPU one). Tests compare distributions.
* No random crop/pad: slices must already have ``size`` (``prepare_dataset`` guarantees it), so the
  CPU pipeline's ``RandomCrop`` is a no-op there too.
* For the same parameters the two agree to float precision: the affine is the same matrix and
  ``grid_sample`` (bilinear, ``align_corners=False``) uses OpenCV's pixel-centre convention
  (tests/test_gpu_augment.py checks this against albumentations' own warp).
* An optional intensity ``gamma`` (off by default, so the default equals the CPU pipeline): a
  range-agnostic gamma that maps each image channel to [0, 1] by its own min and max, applies
  ``x ** g`` and maps back (albumentations' ``RandomGamma`` clips to [0, 1], wrong for z-scores).

Memory: images are kept as float32, masks as uint8, only the rows that are trained on. MSD
Hippocampus at 64 x 64: 9270 slices x 64 x 64 x (4 + 1) B = 190 MB (152 MB of it images); even
at 256 x 256 a 10 000-slice table needs 3.3 GB, small next to an 80 GB GPU. float16 storage would
halve the images but round z-scores to 3 significant digits; not worth it at these sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from ..data.torch_data import AUGMENT_STRENGTHS
from ..data.types import SliceTable

__all__ = ["DeviceAugment"]  # DeviceBatchIterator is how loaders.build_data uses it

# columns of the random-number table drawn per batch (fixed, so enabling one option never shifts another)
_HFLIP, _VFLIP, _AFFINE, _ROT, _SX, _SY, _TX, _TY, _INT, _CONTRAST, _BRIGHT, _GAMMA_P, _GAMMA = range(13)
_N_RANDOM = 13


def affine_theta(
    rotate_deg: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor, translate_x: torch.Tensor,
    translate_y: torch.Tensor, size: tuple[int, int],
) -> torch.Tensor:
    """``F.affine_grid`` thetas ``(N, 2, 3)`` of albumentations' ``Affine`` with these parameters.

    Albumentations maps a source pixel ``p`` (pixel centres at integers, centre ``c = (W/2 - 0.5,
    H/2 - 0.5)``) to ``c + t + R S (p - c)`` with ``S = diag(sx, sy)`` and ``R = [[cos, sin],
    [-sin, cos]]``, and OpenCV samples the source at the inverse map. ``affine_grid`` (with
    ``align_corners=False``) works in coordinates ``u = (p - c) / (W/2, H/2)``, in which the
    inverse map is ``u_src = D^-1 (RS)^-1 D (u_out - D^-1 t)`` with ``D = diag(W/2, H/2)``.
    Translations are in pixels.
    """
    h, w = int(size[0]), int(size[1])
    rad = torch.deg2rad(rotate_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # (RS)^-1 = S^-1 R^T
    inv = torch.stack([torch.stack([cos / scale_x, -sin / scale_x], -1),
                       torch.stack([sin / scale_y, cos / scale_y], -1)], -2)  # (N, 2, 2)
    d = torch.tensor([w / 2.0, h / 2.0], dtype=inv.dtype, device=inv.device)
    lin = inv * d[None, None, :] / d[None, :, None]  # D^-1 inv D
    t = torch.stack([translate_x / (w / 2.0), translate_y / (h / 2.0)], -1)  # D^-1 t
    offset = -(lin @ t.unsqueeze(-1))
    return torch.cat([lin, offset], -1)


class DeviceAugment:
    """Batched, vectorised flips, affine and intensity changes of images and masks on their device.

    ``augment(images, masks, generator)`` takes ``images`` (N, C, H, W) float and ``masks``
    (N, H, W) integer on one device and returns new tensors of the same shapes and dtypes. Every
    parameter left as ``None`` comes from the ``strength`` preset of
    :func:`.torch_data.train_transform`, with its probabilities. Set a probability to 0 to switch
    a step off; with all of them 0 the output equals the input exactly.

    Args:
        size: (H, W) of the slices (checked).
        strength: ``"light"`` or ``"medium"``, the presets of ``train_transform``.
        p_hflip, p_vflip: flip probabilities (``p_vflip`` defaults to 0.5 for ``"medium"``, 0 for ``"light"``).
        p_affine: probability of the affine step (0.7, as ``A.Affine(p=0.7)``).
        max_rotate_deg: rotation uniform in ``[-max, max]`` degrees.
        scale_range: x and y scale factors, each uniform in this range, independently (albumentations'
            default ``keep_ratio=False``).
        translate: translation, uniform in ``[-t, t]`` of the width (x) and height (y), truncated to
            whole pixels as albumentations does.
        p_intensity: probability of the contrast/brightness change (0.5).
        intensity_scale: contrast: ``x -> (x - mean) * (1 + c) + mean``, ``c ~ U(-s, s)``, mean per channel.
        intensity_shift: brightness: ``+ b``, ``b ~ U(-s, s)``, in the image's units.
        gamma: ``(low, high)`` range of an optional gamma (see the module notes); ``None`` = off.
        p_gamma: probability of the gamma step when ``gamma`` is given.
        fill: image value outside the warped field of view (the mask gets background, 0).
    """

    def __init__(
        self,
        size: tuple[int, int],
        strength: str = "light",
        *,
        p_hflip: float = 0.5,
        p_vflip: float | None = None,
        p_affine: float = 0.7,
        max_rotate_deg: float | None = None,
        scale_range: tuple[float, float] | None = None,
        translate: float | None = None,
        p_intensity: float = 0.5,
        intensity_scale: float | None = None,
        intensity_shift: float | None = None,
        gamma: tuple[float, float] | None = None,
        p_gamma: float = 0.5,
        fill: float = 0.0,
    ) -> None:
        if strength not in AUGMENT_STRENGTHS:
            raise ValueError(f"unknown augmentation strength {strength!r}; use one of {sorted(AUGMENT_STRENGTHS)}")
        s = AUGMENT_STRENGTHS[strength]
        self.size = (int(size[0]), int(size[1]))
        self.strength = strength
        self.p_hflip = float(p_hflip)
        self.p_vflip = float((0.5 if s["vflip"] else 0.0) if p_vflip is None else p_vflip)
        self.p_affine = float(p_affine)
        self.max_rotate_deg = float(s["rotate"] if max_rotate_deg is None else max_rotate_deg)
        self.scale_range = tuple(float(v) for v in (s["scale"] if scale_range is None else scale_range))
        self.translate = float(s["translate"] if translate is None else translate)
        self.p_intensity = float(p_intensity)
        self.intensity_scale = float(s["intensity"] if intensity_scale is None else intensity_scale)
        self.intensity_shift = float(s["intensity"] if intensity_shift is None else intensity_shift)
        self.gamma = None if gamma is None else (float(gamma[0]), float(gamma[1]))
        self.p_gamma = float(p_gamma)
        self.fill = float(fill)
        for name in ("p_hflip", "p_vflip", "p_affine", "p_intensity", "p_gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if min(self.max_rotate_deg, self.translate, self.intensity_scale, self.intensity_shift) < 0:
            raise ValueError("max_rotate_deg, translate, intensity_scale and intensity_shift must be >= 0")
        if self.gamma is not None and not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must be (low, high) with 0 < low <= high, got {self.gamma}")

    def __repr__(self) -> str:
        return (f"DeviceAugment(size={self.size}, strength={self.strength!r}, p_hflip={self.p_hflip}, "
                f"p_vflip={self.p_vflip}, p_affine={self.p_affine}, max_rotate_deg={self.max_rotate_deg}, "
                f"scale_range={self.scale_range}, translate={self.translate}, p_intensity={self.p_intensity}, "
                f"intensity_scale={self.intensity_scale}, intensity_shift={self.intensity_shift}, "
                f"gamma={self.gamma}, fill={self.fill})")

    def sample_params(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Random parameters of ``n`` samples (one ``torch.rand`` call), as tensors of length ``n``."""
        u = torch.rand(n, _N_RANDOM, generator=generator, device=device)

        def between(col: int, low: float, high: float) -> torch.Tensor:
            return low + (high - low) * u[:, col]

        w, h = self.size[1], self.size[0]
        t = self.translate
        g_low, g_high = self.gamma or (1.0, 1.0)
        return {
            "hflip": u[:, _HFLIP] < self.p_hflip,
            "vflip": u[:, _VFLIP] < self.p_vflip,
            "affine": u[:, _AFFINE] < self.p_affine,
            "rotate": between(_ROT, -self.max_rotate_deg, self.max_rotate_deg),
            "scale_x": between(_SX, *self.scale_range),
            "scale_y": between(_SY, *self.scale_range),
            "translate_x": torch.trunc(between(_TX, -t, t) * w),  # albumentations: int(t * width)
            "translate_y": torch.trunc(between(_TY, -t, t) * h),
            "intensity": u[:, _INT] < self.p_intensity,
            "contrast": 1.0 + between(_CONTRAST, -self.intensity_scale, self.intensity_scale),
            "brightness": between(_BRIGHT, -self.intensity_shift, self.intensity_shift),
            "gamma_on": (u[:, _GAMMA_P] < self.p_gamma) & (self.gamma is not None),
            "gamma": between(_GAMMA, g_low, g_high),
        }

    def apply(self, images: torch.Tensor, masks: torch.Tensor,
              params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment with given parameters (from :meth:`sample_params`): flips, affine, gamma, intensity."""
        if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0] \
                or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"expected images (N, C, H, W) and masks (N, H, W), got {tuple(images.shape)} "
                             f"and {tuple(masks.shape)}")
        if tuple(images.shape[-2:]) != self.size:
            raise ValueError(f"slices are {tuple(images.shape[-2:])} but DeviceAugment was built for {self.size}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point, got {images.dtype}")
        n = images.shape[0]
        if n == 0:
            return images.clone(), masks.clone()
        col = (n, 1, 1, 1)  # broadcast a per-sample flag or value over (C, H, W)

        # flips: exact, with torch.flip (first horizontal, then vertical, as the CPU pipeline)
        x, m = images, masks.unsqueeze(1)
        for key, dim in (("hflip", -1), ("vflip", -2)):
            flag = params[key].view(col)
            x = torch.where(flag, x.flip(dim), x)
            m = torch.where(flag, m.flip(dim), m)

        # affine: one matrix per sample; samples without it keep their pixels exactly (torch.where)
        theta = affine_theta(params["rotate"], params["scale_x"], params["scale_y"], params["translate_x"],
                             params["translate_y"], self.size).to(x.dtype)
        grid = F.affine_grid(theta, [n, 1, *self.size], align_corners=False)
        warped = F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False) + self.fill
        warped_m = F.grid_sample(m.to(x.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        flag = params["affine"].view(col)
        x = torch.where(flag, warped, x)
        m = torch.where(flag, warped_m.round().to(masks.dtype), m)

        if self.gamma is not None:  # range-agnostic gamma per image channel (off by default)
            lo = x.amin(dim=(-2, -1), keepdim=True)
            span = (x.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-6)
            g = params["gamma"].to(x.dtype).view(col)
            gamma_x = lo + span * ((x - lo) / span).clamp(0, 1).pow(g)
            x = torch.where(params["gamma_on"].view(col), gamma_x, x)

        # contrast about each channel's mean, then brightness: ScaleShiftIntensity, no clipping
        mean = x.mean(dim=(-2, -1), keepdim=True)
        scaled = (x - mean) * params["contrast"].to(x.dtype).view(col) + mean + \
            params["brightness"].to(x.dtype).view(col)
        x = torch.where(params["intensity"].view(col), scaled, x)
        return x, m.squeeze(1)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw parameters with ``generator`` (on the tensors' device) and augment."""
        return self.apply(images, masks, self.sample_params(images.shape[0], generator, images.device))


class DeviceBatchIterator:
    """Training batches from a :class:`SliceTable` kept on ``device``, augmented there.

    A drop-in for the trainer's ``DataLoader``: ``len()`` is the number of batches, iterating
    yields ``dict(image=float32 (B, C, H, W), mask=int64 (B, H, W))`` on ``device`` plus
    ``patient_id`` (list of str) and ``slice_index`` (CPU int64 tensor), like the default collate
    of :class:`.torch_data.SegmentationDataset`. :meth:`set_epoch` makes the order (a
    ``DistributedSampler`` permutation, as in the trainer's CPU path) and the augmentation a
    function of (seed, epoch, rank) alone; iterating an epoch twice repeats it exactly.

    Args:
        table: the prepared slices.
        indices: rows of ``table`` to train on (only these are copied to the device).
        batch_size: samples per batch.
        device: where the data is stored and augmented.
        shuffle: shuffle every epoch (``False``: table order).
        drop_last: drop a last, incomplete batch.
        seed: seed of the order and of the augmentation.
        augment: a :class:`DeviceAugment`, or ``None`` for no augmentation.
        num_replicas, rank: data-parallel share (as ``DistributedSampler``; a process's share is
            padded by repetition to equal length when the rows do not divide evenly).
    """

    def __init__(
        self,
        table: SliceTable,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        augment: DeviceAugment | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = np.arange(len(table)) if indices is None else np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
            raise IndexError(f"indices must lie in [0, {len(table)}), got range [{rows.min()}, {rows.max()}]")
        self.device = torch.device(device)
        self.rows = rows
        self.images = torch.from_numpy(np.ascontiguousarray(table.images[rows], dtype=np.float32)).to(self.device)
        self.masks = torch.from_numpy(np.ascontiguousarray(table.masks[rows])).to(self.device)
        self.patient_ids = np.asarray(table.patient_ids[rows])
        self.slice_index = np.asarray(table.slice_index[rows], dtype=np.int64)
        self.batch_size, self.drop_last, self.shuffle = int(batch_size), bool(drop_last), bool(shuffle)
        self.seed, self.rank, self.augment = int(seed), int(rank), augment
        self.sampler = DistributedSampler(range(len(rows)), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=False)
        self.epoch = 0

    @property
    def nbytes(self) -> int:
        """Device memory held by the stored images and masks."""
        return self.images.nbytes + self.masks.nbytes

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Order and augmentation of the next iterations: those of ``epoch``."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(self.epoch)

    def epoch_seed(self) -> int:
        """The augmentation seed of the current epoch (the CPU path's formula)."""
        return int(np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1)[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        order_dev = torch.from_numpy(order).to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.epoch_seed())
        for b in range(len(self)):
            pos = order[b * self.batch_size : (b + 1) * self.batch_size]
            sel = order_dev[b * self.batch_size : (b + 1) * self.batch_size]
            images, masks = self.images.index_select(0, sel), self.masks.index_select(0, sel)
            if self.augment is not None:
                images, masks = self.augment(images, masks, generator)
            yield {"image": images, "mask": masks.long(), "patient_id": self.patient_ids[pos].tolist(),
                   "slice_index": torch.from_numpy(self.slice_index[pos])}


def device_loader(cfg: Any, table: SliceTable, rows: np.ndarray, dist_info: Any,
                  device: torch.device) -> DeviceBatchIterator:
    """The loader of ``data.augment_on: device`` (called by ``loaders.build_data`` by name)."""
    dc, tc = cfg.data, cfg.train
    n_share = math.ceil(len(rows) / dist_info.world_size)  # what a DistributedSampler gives a rank
    return DeviceBatchIterator(
        table, rows, tc.batch_size, device, shuffle=True, drop_last=n_share > tc.batch_size, seed=tc.seed,
        augment=None if dc.augment == "none" else DeviceAugment(dc.size, dc.augment),
        num_replicas=dist_info.world_size, rank=dist_info.rank)
