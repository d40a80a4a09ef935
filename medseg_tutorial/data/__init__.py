"""Data layer: importers for real datasets, preprocessing, caching, splits and the torch Dataset."""

from .registry import dataset_info, dataset_path, iter_cases, list_datasets, register_dataset
from .types import Case, DatasetInfo, SliceTable

__all__ = [
    "Case",
    "DatasetInfo",
    "SliceTable",
    "dataset_info",
    "dataset_path",
    "iter_cases",
    "list_datasets",
    "register_dataset",
]
