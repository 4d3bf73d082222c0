"""Datasets from local files (nothing is downloaded at run time) and on-device batches."""

from locallearn.data.augmentation import Augmentation, default_augmentation
from locallearn.data.dataset import INPUT_SCALINGS, Dataset
from locallearn.data.digits import Split, load_digits
from locallearn.data.files import DatasetNotFoundError
from locallearn.data.loader import DeviceLoader
from locallearn.data.registry import DATASET_NAMES, load_dataset
from locallearn.data.stream import (
    BAD_IMAGE_POLICIES,
    STREAMED_DATASETS,
    StreamedDataset,
    StreamingLoader,
    UnreadableImageError,
    load_streamed,
)

__all__ = [
    "BAD_IMAGE_POLICIES",
    "INPUT_SCALINGS",
    "STREAMED_DATASETS",
    "StreamedDataset",
    "StreamingLoader",
    "UnreadableImageError",
    "load_streamed",
    "DATASET_NAMES",
    "Augmentation",
    "Dataset",
    "DatasetNotFoundError",
    "DeviceLoader",
    "Split",
    "default_augmentation",
    "load_dataset",
    "load_digits",
]
