"""medseg_tutorial: the companion package of *Transfer Learning for Medical Image Segmentation*."""

import os as _os

# albumentations checks PyPI for updates at import unless told not to; never phone home.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from ._version import __version__

__all__ = ["__version__"]
