"""A seeded synthetic CT phantom: SYNTHETIC, NEVER REAL DATA.

It lets every chapter and test run offline in seconds. Each "patient" is a small stack of axial
CT-like slices in Hounsfield units: an elliptical body (fat rim, soft tissue, spine, two unlabelled
kidney-like blobs) around a liver-like organ (label 1) with a few small lesions (label 2). The organ
is an ellipsoid, so the end slices are often empty, as in real scans. Nothing here resembles a real
patient; do not draw clinical conclusions from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .registry import register_dataset
from .types import Case, DatasetInfo

PHANTOM_INFO = DatasetInfo(
    name="phantom", modality="CT", class_names=("background", "organ", "lesion"), channel_names=("CT",),
    licence="generated; CC0", citation="synthetic, not real data", url="",
    description="Seeded synthetic CT phantom (HU) with a liver-like organ and small lesions. "
    "Synthetic: never real patient data.",
    subdir="", patient_count=12, has_raw_hu=True,  # generated, so no data root is needed
)

# Mean intensities in HU; the noise makes neighbouring tissues overlap a little, as in real CT.
_HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "kidney": 150.0, "organ": 60.0, "lesion": 10.0, "bone": 400.0}


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_phantom_case(
    patient_id: str, seed: int, n_slices: int = 8, size: int = 64, noise_hu: float = 12.0
) -> Case:
    """One SYNTHETIC phantom patient: ``n_slices`` axial CT slices of ``size`` x ``size`` pixels in HU.

    The same ``seed`` always gives the same phantom. Labels: 0 background, 1 organ, 2 lesion.
    """
    if n_slices < 1 or size < 16:
        raise ValueError(f"phantom needs n_slices >= 1 and size >= 16, got n_slices={n_slices}, size={size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # coordinates in [0, 1)
    # slice positions in [-1, 1]; the organ is an ellipsoid, so its cross-section shrinks towards the ends
    zs = np.linspace(-1.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)

    body = dict(cy=0.5 + rng.uniform(-0.03, 0.03), cx=0.5 + rng.uniform(-0.03, 0.03),
                ry=rng.uniform(0.30, 0.36), rx=rng.uniform(0.40, 0.46))
    organ = dict(cy=body["cy"] - rng.uniform(0.02, 0.08), cx=body["cx"] - rng.uniform(0.12, 0.18),
                 ry=rng.uniform(0.13, 0.18), rx=rng.uniform(0.14, 0.20), rz=rng.uniform(0.8, 1.1))
    kidney_y = body["cy"] + rng.uniform(0.08, 0.12)
    kidneys = [(kidney_y, body["cx"] + dx, rng.uniform(0.05, 0.07), rng.uniform(0.04, 0.05)) for dx in (-0.17, 0.17)]
    kidneys = [k for k in kidneys if abs(k[1] - organ["cx"]) > 0.1]  # keep kidneys clear of the organ
    spine = (body["cy"] + body["ry"] - 0.08, body["cx"], 0.05, 0.05)

    # lesions: small spheres placed inside the organ ellipsoid (centre within 60 % of its radii)
    lesions = []
    for _ in range(rng.integers(1, 4)):
        u = rng.uniform(-0.6, 0.6, size=3)
        lesions.append((organ["cy"] + u[0] * organ["ry"], organ["cx"] + u[1] * organ["rx"],
                        u[2] * organ["rz"], rng.uniform(0.035, 0.065)))

    image = np.empty((n_slices, 1, size, size), np.float32)
    mask = np.zeros((n_slices, size, size), np.uint8)
    body_mask = _ellipse(yy, xx, body["cy"], body["cx"], body["ry"], body["rx"])
    inner = _ellipse(yy, xx, body["cy"], body["cx"], body["ry"] - 0.03, body["rx"] - 0.03)
    for s, z in enumerate(zs):
        hu = np.full((size, size), _HU["air"], np.float32)
        hu[body_mask] = _HU["fat"]
        hu[inner] = _HU["soft"]
        for ky, kx, kry, krx in kidneys:
            hu[_ellipse(yy, xx, ky, kx, kry, krx)] = _HU["kidney"]
        hu[_ellipse(yy, xx, *spine)] = _HU["bone"]
        shrink = 1.0 - (z / organ["rz"]) ** 2
        if shrink > 0:
            r = np.sqrt(shrink)
            in_organ = _ellipse(yy, xx, organ["cy"], organ["cx"], organ["ry"] * r, organ["rx"] * r) & inner
            hu[in_organ] = _HU["organ"]
            mask[s][in_organ] = 1
            for ly, lx, lz, lr in lesions:
                lr2 = lr**2 - (z - lz) ** 2 * 0.02  # lesions span a few slices
                if lr2 > 0:
                    in_lesion = _ellipse(yy, xx, ly, lx, np.sqrt(lr2), np.sqrt(lr2)) & in_organ
                    hu[in_lesion] = _HU["lesion"]
                    mask[s][in_lesion] = 2
        # noise only inside the body: air outside a scanner's field reads as a flat -1000
        hu[body_mask] += rng.normal(0.0, noise_hu, size=int(body_mask.sum())).astype(np.float32)
        image[s, 0] = hu
    pixel_mm = 320.0 / size  # a 32 cm field of view, whatever the matrix size
    return Case(patient_id=patient_id, image=image, mask=mask, spacing=(5.0, pixel_mm, pixel_mm),
                slice_index=np.arange(n_slices), source=f"synthetic phantom (seed {seed})")


def phantom_cases(n_patients: int = 12, seed: int = 0, n_slices: int = 8, size: int = 64) -> Iterator[Case]:
    """Yield ``n_patients`` SYNTHETIC phantom patients ``phantom000``, ``phantom001``, ...

    Patient ``k``'s seed comes from ``(seed, k)``, so it is the same whatever ``n_patients`` is.
    Used in chapter 3.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    for k in range(n_patients):
        patient_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        yield make_phantom_case(f"phantom{k:03d}", patient_seed, n_slices=n_slices, size=size)


@register_dataset(PHANTOM_INFO)
def _import_phantom(root: Path) -> Iterator[Case]:
    """Registry importer: ignores ``root`` and generates the default 12-patient SYNTHETIC set."""
    del root  # generated, nothing to read
    return phantom_cases(PHANTOM_INFO.patient_count or 12)
