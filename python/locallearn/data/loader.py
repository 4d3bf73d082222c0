"""`DeviceLoader`: a whole dataset kept on one device, batched, augmented and
normalised there, with no worker processes and no per-batch host transfers."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from locallearn.data.augmentation import (
    Augmentation,
    AugmentationDraws,
    cut_out,
    flip_horizontally,
    translate,
)
from locallearn.data.dataset import check_examples
from locallearn.data.sampling import batch_sizes, check_shard, class_restricted_order, rank_slices

NO_DRAWS = AugmentationDraws(shifts=None, flips=None, cutout_corners=None)


class DeviceLoader:
    """Batches of (float32 normalised images (B, C, H, W), int64 labels (B,)) on ``device``.

    The images are moved to ``device`` once: uint8 stays uint8 (a quarter of the
    memory) and floating images become float32. Each batch is gathered, augmented
    (translation and flips on the stored pixels, zero-filled; cutout after
    normalisation), and normalised per channel as (x - mean) / std, with x = pixel / 255
    for uint8 and the pixel itself otherwise.

    ``classes_per_batch=k`` restricts each batch to k classes (see
    `class_restricted_order`); it needs ``shuffle``.

    All randomness of an epoch (order, then augmentation) comes from the generator
    passed to `epoch`, drawn on the generator's device and moved to ``device``: a
    CPU generator gives the same epoch on every device (one small transfer per
    epoch), a generator on ``device`` avoids the transfer. The same seed gives the
    same epoch."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        device: torch.device | str,
        mean: Sequence[float],
        std: Sequence[float],
        augmentation: Augmentation | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        classes_per_batch: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        check_examples(images, labels)
        check_statistics(mean, std, images.shape[1])
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.rank, self.ranks = rank, ranks = check_shard(shard)
        self._batch_sizes = batch_sizes(len(labels), batch_size * ranks, drop_last)
        if not self._batch_sizes:
            raise ValueError(f"drop_last with batch_size {batch_size}{f' × {ranks} ranks' if ranks > 1 else ''} > "
                             f"{len(labels)} examples leaves no batch")
        if classes_per_batch is not None:
            present = len(torch.unique(labels))
            if not 1 <= classes_per_batch <= present:
                raise ValueError(f"classes_per_batch must be in [1, {present}] (the classes present), got {classes_per_batch}")
            if not shuffle:
                raise ValueError("classes_per_batch draws random classes: it needs shuffle=True")
            self._cpu_labels = labels.cpu()
        if augmentation is not None and not isinstance(augmentation, Augmentation):
            raise ValueError(f"augmentation must be an Augmentation or None, got {type(augmentation).__name__}")
        self.device = torch.device(device)
        self.augmentation = augmentation if augmentation != Augmentation() else None  # None: nothing to draw
        self.shuffle = shuffle
        self.classes_per_batch = classes_per_batch
        is_uint8 = images.dtype == torch.uint8
        self._images = images.to(self.device, torch.uint8 if is_uint8 else torch.float32)
        self._labels = labels.to(self.device, torch.int64)
        self._scale, self._shift = normalisation(mean, std, pixel_scale=255.0 if is_uint8 else 1.0, device=self.device)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._batch_sizes)

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the data, from batch ``start`` on (a run resumed mid-epoch). The
        order and augmentation of the whole pass are drawn now, from ``generator`` (needed
        unless the loader neither shuffles nor augments), so the batches after ``start``
        are those an uninterrupted pass would give."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be a batch index in [0, {len(self)}], got {start}")
        if generator is None and (self.shuffle or self.augmentation is not None):
            raise ValueError("this loader shuffles or augments: pass a torch.Generator to epoch()")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        order = self._order(generator)
        draws = NO_DRAWS
        if self.augmentation is not None:
            image_size = tuple(self._images.shape[2:])
            draws = self.augmentation.draw(len(order), image_size, generator).to(self.device)
        return self._batches(order, draws, start)

    def _order(self, generator: torch.Generator | None) -> Tensor:
        count = sum(self._batch_sizes)
        if self.classes_per_batch is not None:
            order = class_restricted_order(self._cpu_labels, self._batch_sizes, self.classes_per_batch, generator)
        elif self.shuffle:
            order = torch.randperm(len(self._labels), generator=generator, device=generator.device)[:count]
        else:
            order = torch.arange(count)
        return order.to(self.device)

    def _batches(self, order: Tensor, draws: AugmentationDraws, first_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for rows in rank_slices(self._batch_sizes, self.rank, self.ranks, first_batch):
            indices = order[rows]
            yield self._transform(self._images[indices], draws.rows(rows)), self._labels[indices]

    def _transform(self, images: Tensor, draws: AugmentationDraws) -> Tensor:
        if draws.shifts is not None:
            images = translate(images, draws.shifts, self.augmentation.crop_padding)
        if draws.flips is not None:
            images = flip_horizontally(images, draws.flips)
        normalised = images.to(torch.float32) * self._scale - self._shift
        if draws.cutout_corners is not None:
            normalised = cut_out(normalised, draws.cutout_corners, self.augmentation.cutout)
        return normalised


def check_statistics(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """ValueError unless ``mean`` and ``std`` give one finite value per channel and every
    std is positive (a channel constant over the training set cannot be standardised)."""
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
    if not all(math.isfinite(value) for value in mean):
        raise ValueError(f"mean must be finite, got {tuple(mean)}")
    if not all(math.isfinite(value) and value > 0 for value in std):
        raise ValueError(f"std must be positive and finite for every channel, got {tuple(std)}: a channel that is "
                         "constant over the training images cannot be standardised; scale the input to [0, 1] "
                         "instead (input scaling 'unit')")


def normalisation(
    mean: Sequence[float], std: Sequence[float], pixel_scale: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(scale, shift) of shape (1, C, 1, 1) with (pixel / pixel_scale - mean) / std = pixel * scale - shift."""
    mean64 = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return (1 / (pixel_scale * std64)).to(device, torch.float32), (mean64 / std64).to(device, torch.float32)

