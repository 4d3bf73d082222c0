"""`Dataset`: a train/test split with the per-channel statistics used to normalise it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from locallearn.data.digits import Split

INPUT_SCALINGS = ("standardize", "unit")
"""How images reach the network: x = pixel / 255 standardised with the training set's
per-channel mean and std, or left in [0, 1] (seed 002 §4: "dividing the pixel values by 255")."""


@dataclass(frozen=True)
class Dataset:
    """Images (N, C, H, W), uint8 as stored in image files or float32 in [0, 1], and
    int64 labels in [0, num_classes). ``mean`` and ``std`` are per channel over the
    training images on the [0, 1] scale, for normalising every split. The validation
    split, held out of the training set, is empty unless one was asked for."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_validation: Tensor | None = None
    y_validation: Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        splits = [("training", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if (self.x_validation is None) != (self.y_validation is None):
            raise ValueError("give both validation images and labels, or neither")
        if self.x_validation is not None:
            splits.append(("validation", self.x_validation, self.y_validation))
        for split, images, labels in splits:
            check_examples(images, labels, f"the {split} split")
            if images.shape[1:] != self.x_train.shape[1:]:
                raise ValueError(f"the {split} images are {tuple(images.shape[1:])} but the training images are "
                                 f"{tuple(self.x_train.shape[1:])}")
            if labels.max() >= self.num_classes:
                raise ValueError(f"the {split} split has label {labels.max().item()}, but num_classes is "
                                 f"{self.num_classes}")
        if len(self.mean) != self.x_train.shape[1] or len(self.std) != self.x_train.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({self.x_train.shape[1]}), got "
                             f"{len(self.mean)} and {len(self.std)}")

    def input_statistics(self, scaling: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) a loader subtracts and divides by for ``scaling`` (INPUT_SCALINGS)."""
        return scaling_statistics(scaling, self.mean, self.std)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        channels, height, width = self.x_train.shape[1:]
        return channels, height, width

    @classmethod
    def from_split(cls, name: str, split: Split, validation: tuple[Tensor, Tensor] | None = None) -> Dataset:
        """A dataset whose statistics are computed from ``split``'s training images, with
        ``validation`` = (images, labels) held out of them, if given."""
        mean, std = channel_mean_std(split.x_train)
        x_validation, y_validation = validation or (None, None)
        return cls(name, *split[:4], num_classes=split.num_classes, mean=mean, std=std, x_validation=x_validation,
                   y_validation=y_validation)


def check_examples(images: Tensor, labels: Tensor, what: str = "the dataset") -> None:
    """ValueError unless ``images`` (N, C, H, W), uint8 or finite floats, and ``labels``
    (N,), integers ≥ 0, are ``what``'s N ≥ 1 examples."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a 4-D tensor (N, C, H, W), got {getattr(images, 'shape', type(images))}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    integer = isinstance(labels, Tensor) and not labels.is_floating_point() and labels.dtype != torch.bool
    if not integer or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D integer tensor, got {getattr(labels, 'dtype', type(labels))}")
    if len(images) != len(labels):
        raise ValueError(f"{what} has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError(f"{what} is empty")
    if images.is_floating_point() and not torch.isfinite(images).all():
        raise ValueError(f"{what}'s images hold NaN or infinite values")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min().item()}")


def scaling_statistics(scaling: str, mean: tuple[float, ...],
                       std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) that input ``scaling`` (INPUT_SCALINGS) normalises with, given a dataset's
    per-channel ``mean`` and ``std``: those, or zeros and ones (pixel / 255 left in [0, 1])."""
    if scaling not in INPUT_SCALINGS:
        raise ValueError(f"unknown input scaling {scaling!r}; choose one of {', '.join(INPUT_SCALINGS)}")
    if scaling == "standardize":
        return mean, std
    return (0.0,) * len(mean), (1.0,) * len(mean)


def channel_mean_std(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of (N, C, H, W) images on
    the [0, 1] scale. uint8 images are summarised by a histogram per channel, which is
    exact and needs no float copy of the whole set."""
    means, stds = [], []
    for channel in range(images.shape[1]):
        pixels = images[:, channel].reshape(-1)
        if images.dtype == torch.uint8:
            counts = torch.bincount(pixels, minlength=256).double()
            values = torch.arange(256, dtype=torch.float64) / 255
            mean = (counts @ values) / counts.sum()
            variance = (counts @ (values - mean) ** 2) / counts.sum()
        else:
            variance, mean = torch.var_mean(pixels.double(), correction=0)
        means.append(mean.item())
        stds.append(variance.sqrt().item())
    return tuple(means), tuple(stds)
