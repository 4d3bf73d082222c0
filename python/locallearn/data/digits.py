"""scikit-learn's bundled handwritten digits (1797 8×8 images, 10 classes)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split
from torch import Tensor


class Split(NamedTuple):
    """Images (N, C, H, W) (float32 in [0, 1], or uint8 as read from image files) and
    integer labels (N,) for training and test."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """A stratified train/test split of the digits as (N, 1, 8, 8) float32 images,
    ``test_fraction`` of them (strictly between 0 and 1) held out for test."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2³²), got {seed!r}")
    digits = _sklearn_digits()
    test_size = math.ceil(test_fraction * len(digits.target))  # as train_test_split rounds
    if min(test_size, len(digits.target) - test_size) < 10:
        raise ValueError(f"test_fraction={test_fraction} leaves {test_size} of {len(digits.target)} images for test: "
                         "a stratified split needs at least one image of each of the 10 classes on both sides")
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train, test = train_test_split(
        torch.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    return Split(images[train], labels[train], images[test], labels[test], num_classes=10)
