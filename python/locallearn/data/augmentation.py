"""Random translation, horizontal flips and cutout, vectorised over a batch on its device.

Randomness is drawn once per epoch for every example (`Augmentation.draw`) and the
transforms take those draws, so a batch is a pure function of its draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class AugmentationDraws(NamedTuple):
    """Per-example random parameters; None where the transform is off.

    shifts: (N, 2) int64 (down, right) in [-p, p]; flips: (N,) bool;
    cutout_corners: (N, 2) int64 top-left (row, column) of the square, which may lie
    outside the image."""

    shifts: Tensor | None
    flips: Tensor | None
    cutout_corners: Tensor | None

    def to(self, device: torch.device) -> AugmentationDraws:
        """The draws moved to ``device``."""
        return AugmentationDraws(*(None if draw is None else draw.to(device) for draw in self))

    def rows(self, rows: slice) -> AugmentationDraws:
        """The draws of the examples in ``rows`` (one batch)."""
        return AugmentationDraws(*(None if draw is None else draw[rows] for draw in self))


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation.

    crop_padding=p: pad by p zero (black) pixels and crop back at a random offset, i.e.
    translate by up to ±p pixels each way (p=2 is "2-pixel jitter", p=4 CIFAR's standard).
    horizontal_flip: mirror left-right with probability 1/2.
    cutout=s: zero an s×s square centred anywhere in the image and clipped at its borders
    (DeVries & Taylor 2017); applied after normalisation, so the square holds the mean."""

    crop_padding: int = 0
    horizontal_flip: bool = False
    cutout: int = 0

    def __post_init__(self) -> None:
        for name in ("crop_padding", "cutout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.horizontal_flip, bool):
            raise ValueError(f"horizontal_flip must be True or False, got {self.horizontal_flip!r}")

    def draw(self, count: int, image_size: tuple[int, int], generator: torch.Generator) -> AugmentationDraws:
        """Random parameters for ``count`` examples, drawn on ``generator``'s device in a
        fixed order (shifts, flips, cutout)."""
        device = generator.device
        padding = self.crop_padding
        shifts = flips = corners = None
        if padding:
            shifts = torch.randint(-padding, padding + 1, (count, 2), generator=generator, device=device)
        if self.horizontal_flip:
            flips = torch.randint(0, 2, (count,), generator=generator, device=device).bool()
        if self.cutout:
            centres = [torch.randint(0, size, (count,), generator=generator, device=device) for size in image_size]
            corners = torch.stack(centres, dim=1) - self.cutout // 2
        return AugmentationDraws(shifts, flips, corners)


def translate(images: Tensor, shifts: Tensor, padding: int) -> Tensor:
    """Each image moved down/right by its (N, 2) ``shifts`` (each within ±``padding``),
    zero-filled: output[n, :, i, j] = images[n, :, i - down, j - right]."""
    count, channels, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    device = images.device
    rows = torch.arange(height, device=device) + padding - shifts[:, :1]
    columns = torch.arange(width, device=device) + padding - shifts[:, 1:]
    examples = torch.arange(count, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return padded[examples, channel_index, rows[:, None, :, None], columns[:, None, None, :]]


def flip_horizontally(images: Tensor, flips: Tensor) -> Tensor:
    """Images mirrored left-right where ``flips`` (N,) is True."""
    return torch.where(flips[:, None, None, None], images.flip(3), images)


def cut_out(images: Tensor, corners: Tensor, size: int) -> Tensor:
    """Images with the ``size``×``size`` square at each example's top-left ``corners``
    (N, 2) set to zero, clipped to the image."""
    height, width = images.shape[2:]
    device = images.device
    rows = torch.arange(height, device=device) - corners[:, :1]
    columns = torch.arange(width, device=device) - corners[:, 1:]
    inside_rows = (rows >= 0) & (rows < size)
    inside_columns = (columns >= 0) & (columns < size)
    square = inside_rows[:, None, :, None] & inside_columns[:, None, None, :]
    return images.masked_fill(square, 0)


# Nøkland & Eidnes 2019, "Training neural networks with local error signals", §4.
_PAPER_AUGMENTATION = {
    "mnist": Augmentation(crop_padding=2),
    "fashion-mnist": Augmentation(crop_padding=2, horizontal_flip=True),
    "kmnist": Augmentation(),
    "cifar10": Augmentation(crop_padding=4, horizontal_flip=True),
    "cifar100": Augmentation(crop_padding=4, horizontal_flip=True),
    "svhn": Augmentation(crop_padding=2),
    "stl10": Augmentation(crop_padding=12, horizontal_flip=True),
    "digits": Augmentation(),
    "synthetic": Augmentation(),
}


def default_augmentation(name: str) -> Augmentation:
    """The augmentation Nøkland & Eidnes (2019) used for dataset ``name``: 2-pixel jitter
    for MNIST and SVHN, plus flips for Fashion-MNIST, none for KMNIST, crop padding 4 and
    flips for CIFAR, crop padding 12 and flips for STL-10; none for digits and synthetic."""
    if name not in _PAPER_AUGMENTATION:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(_PAPER_AUGMENTATION)}")
    return _PAPER_AUGMENTATION[name]
