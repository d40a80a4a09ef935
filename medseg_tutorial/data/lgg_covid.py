"""LGG and COVID-SemiSeg: the registered datasets of paired 2-D image and mask files.

Both are in layouts the ``folder`` dataset reads (:mod:`.folder`), so they are described by
:class:`~.folder.FolderOptions` rather than read by code of their own: LGG keeps a patient's slices
and their ``_mask`` files in one folder per patient; COVID-SemiSeg keeps images in ``Imgs/`` and
masks under the same names in ``GT/``, in an official train and test part.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

from ._io import FileLayout, Item
from .errors import DataError
from .folder import FolderOptions, folder_items, read_folder_item
from .registry import register_dataset
from .types import DatasetInfo

# --- registered datasets ------------------------------------------------------------------------

LGG = DatasetInfo(
    name="lgg", modality="MRI", class_names=("background", "abnormality"),
    channel_names=("pre-contrast", "FLAIR", "post-contrast"), licence="CC BY-NC-SA 4.0",
    citation=(
        "Buda et al., 'Association of genomic subtypes of lower-grade gliomas with shape features "
        "automatically extracted by a deep learning algorithm', Computers in Biology and Medicine "
        "109 (2019); images from TCIA, TCGA-LGG collection."
    ),
    url="https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation",
    description=(
        "Lower-grade glioma brain MRI (TCGA-LGG), 256 x 256 slices with 3 channels (pre-contrast, "
        "FLAIR, post-contrast; a missing sequence is replaced by FLAIR) and a binary FLAIR "
        "abnormality mask; one folder per patient."
    ),
    subdir="lgg-mri-segmentation/kaggle_3m", patient_count=110,
)

_COVID_COMMON = {
    "modality": "CT", "channel_names": ("CT",), "licence": "non-commercial research and education use only",
    "citation": (
        "Fan et al., 'Inf-Net: Automatic COVID-19 Lung Infection Segmentation from CT Images', "
        "IEEE TMI 39(8):2626-2637 (2020); slices from the COVID-19 CT segmentation dataset of "
        "medicalsegmentation.com (Italian Society of Medical and Interventional Radiology)."
    ),
    "url": "https://github.com/DengPingFan/Inf-Net", "subdir": "covid19-ct-semiseg",
    # no patient ids are published: each of the 50 + 48 slices counts as its own "patient",
    # although they come from about 40 people, so a split by image can leak a person across sets
    "patient_count": 98,
}

COVID_CT = DatasetInfo(
    name="covid_ct",
    class_names=("background", "infection"),
    description="COVID-SemiSeg labelled axial CT slices (8-bit) with binary lung infection masks.",
    **_COVID_COMMON,
)

COVID_CT_MULTICLASS = DatasetInfo(
    name="covid_ct_multiclass",
    class_names=("background", "ground-glass", "consolidation"),
    description="COVID-SemiSeg labelled axial CT slices (8-bit) with ground-glass and consolidation masks.",
    **_COVID_COMMON,
)

# the folder of each official part, holding Imgs/ and GT/
_COVID_PARTS = {
    COVID_CT.name: {"train": "TrainingSet/LungInfection-Train/Doctor-label", "test": "TestingSet/LungInfection-Test"},
    COVID_CT_MULTICLASS.name: {"train": "TrainingSet/MultiClassInfection-Train",
                               "test": "TestingSet/MultiClassInfection-Test"},
}
# a patient's slices side by side, each with its "<name>_mask" file; 0/255 masks become 0/1
LGG_LAYOUT = FolderOptions(images=".", masks=".", mask_suffix="_mask", instances=False, subject="folder", stack=True,
                           channels=3)
# each 8-bit slice is its own "patient" (no ids are published); palette masks hold class indices
COVID_LAYOUT = FolderOptions(images="Imgs", masks="GT", mask_suffix="", instances=False, subject="stem", channels=1)


def _covid_items(root: Path, name: str) -> list[Item]:
    """Items of both official parts; ids are ``train_<n>`` / ``test_<n>`` and ``group`` the part."""
    items = []
    for part, folder in _COVID_PARTS[name].items():
        if not (root / folder).is_dir():
            raise DataError(root / folder, f"the official {part} part of COVID-SemiSeg is missing", "missing_file")
        items += [dataclasses.replace(item, patient_id=f"{part}_{item.patient_id}", group=part)
                  for item in folder_items(root / folder, COVID_LAYOUT)]
    return items


register_dataset(LGG)(FileLayout(partial(folder_items, opts=LGG_LAYOUT), partial(read_folder_item, opts=LGG_LAYOUT),
                                 LGG.num_classes))
for _info in (COVID_CT, COVID_CT_MULTICLASS):
    register_dataset(_info)(FileLayout(partial(_covid_items, name=_info.name),
                                       partial(read_folder_item, opts=COVID_LAYOUT), _info.num_classes))

