"""Data layer: importers for real datasets, preprocessing, caching, splits and the torch Dataset."""

# Importing the importer modules registers their datasets (msd_hippocampus, acdc, lgg, covid_ct, ...).
from .acdc import acdc_official_split, read_acdc_h5, read_acdc_nifti, read_info_cfg
from .catalog import (
    DatasetStatus,
    downloadable,
    ensure_dataset,
    fetch_dataset,
    format_dataset_list,
    list_local_datasets,
    manual_instructions,
)
from .check import CheckReport, Problem, check_dataset, summarize_dataset
from .download import archive_source, fetch_msd, msd_task_name
from .errors import DataError
from .gpu_augment import DeviceAugment, DeviceBatchIterator, affine_theta
from .msd import msd_info, read_msd_task, register_msd_task
from .paired import read_paired_folder
from .phantom import PHANTOM_INFO, make_phantom_case, phantom_cases
from .prepare import CACHE_FORMAT, cache_path, prepare_dataset
from .preprocess import (
    CT_WINDOWS,
    RESIZE_MODES,
    ct_window,
    default_normalizer,
    list_normalizers,
    normalize_case,
    percentile_zscore,
    register_normalizer,
    resize_slices,
    resolve_window,
    scale_8bit,
    select_slices,
)
from .registry import (
    dataset_importer,
    dataset_info,
    dataset_path,
    iter_cases,
    list_datasets,
    register_dataset,
)
from .splits import (
    SUBSETS,
    Split,
    label_fraction,
    leakage_report,
    load_split,
    patient_split,
    save_split,
    slice_split,
)
from .torch_data import (
    ScaleShiftIntensity,
    SegmentationDataset,
    default_num_workers,
    eval_transform,
    make_loader,
    seed_worker,
    train_transform,
)
from .types import Case, DatasetInfo, SliceTable

__all__ = [
    "CACHE_FORMAT",
    "CT_WINDOWS",
    "PHANTOM_INFO",
    "RESIZE_MODES",
    "SUBSETS",
    "Case",
    "CheckReport",
    "DataError",
    "DatasetInfo",
    "DatasetStatus",
    "DeviceAugment",
    "DeviceBatchIterator",
    "Problem",
    "ScaleShiftIntensity",
    "SegmentationDataset",
    "SliceTable",
    "Split",
    "acdc_official_split",
    "affine_theta",
    "archive_source",
    "cache_path",
    "check_dataset",
    "ct_window",
    "dataset_importer",
    "dataset_info",
    "dataset_path",
    "default_normalizer",
    "default_num_workers",
    "downloadable",
    "ensure_dataset",
    "eval_transform",
    "fetch_dataset",
    "fetch_msd",
    "format_dataset_list",
    "iter_cases",
    "label_fraction",
    "leakage_report",
    "list_datasets",
    "list_local_datasets",
    "list_normalizers",
    "load_split",
    "make_loader",
    "make_phantom_case",
    "manual_instructions",
    "msd_info",
    "msd_task_name",
    "normalize_case",
    "patient_split",
    "percentile_zscore",
    "phantom_cases",
    "prepare_dataset",
    "read_acdc_h5",
    "read_acdc_nifti",
    "read_info_cfg",
    "read_msd_task",
    "read_paired_folder",
    "register_dataset",
    "register_msd_task",
    "register_normalizer",
    "resize_slices",
    "resolve_window",
    "save_split",
    "scale_8bit",
    "seed_worker",
    "select_slices",
    "slice_split",
    "summarize_dataset",
    "train_transform",
]
