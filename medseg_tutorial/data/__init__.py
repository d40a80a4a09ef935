"""Data layer: importers for real datasets, preprocessing, caching, splits and the torch Dataset."""

# Importing the importer modules registers their datasets (msd_hippocampus, acdc, lgg, covid_ct, ...).
from .acdc import acdc_official_split, read_acdc_h5, read_acdc_nifti, read_info_cfg
from .check import CheckReport, Problem, check_dataset, summarize_dataset
from .download import fetch_msd, msd_task_name
from .errors import DataError
from .msd import msd_info, read_msd_task, register_msd_task
from .paired import read_paired_folder
from .registry import dataset_info, dataset_path, iter_cases, list_datasets, register_dataset
from .types import Case, DatasetInfo, SliceTable

__all__ = [
    "Case",
    "CheckReport",
    "DataError",
    "DatasetInfo",
    "Problem",
    "SliceTable",
    "acdc_official_split",
    "check_dataset",
    "dataset_info",
    "dataset_path",
    "fetch_msd",
    "iter_cases",
    "list_datasets",
    "msd_info",
    "msd_task_name",
    "read_acdc_h5",
    "read_acdc_nifti",
    "read_info_cfg",
    "read_msd_task",
    "read_paired_folder",
    "register_dataset",
    "register_msd_task",
    "summarize_dataset",
]
