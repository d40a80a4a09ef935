"""Data layer: importers for real datasets, preprocessing, caching, splits and the torch Dataset.

The names below are what the chapters use; everything else is imported from its module
(``medseg_tutorial.data.preprocess``, ``.splits``, ``.msd``, ...).
"""

from .errors import DataError
from .prepare import prepare_dataset
from .registry import dataset_info, iter_cases, list_datasets, register_dataset
from .splits import Split, patient_split
from .summary import summarize_dataset
from .torch_data import SegmentationDataset, make_loader
from .types import Case, DatasetInfo, SliceTable

__all__ = [
    "Case",
    "DataError",
    "DatasetInfo",
    "SegmentationDataset",
    "SliceTable",
    "Split",
    "dataset_info",
    "iter_cases",
    "list_datasets",
    "make_loader",
    "patient_split",
    "prepare_dataset",
    "register_dataset",
    "summarize_dataset",
]
