"""Datasets too large for memory, streamed from image files: `StreamedDataset` (an ImageNet or
ImageFolder tree) and `StreamingLoader`, which decodes and augments in DataLoader worker
processes and serves the trainer what `DeviceLoader` serves it.

Decoding is Pillow's. Training images get the random-resized crop of Szegedy et al. (2015)
as torchvision's RandomResizedCrop draws it (area 8–100 %, aspect ratio 3/4–4/3, ten tries,
then the centre crop) and a horizontal flip with probability 1/2; evaluation images are
resized so the shorter side is 256/224 of the crop and centre-cropped. Every random number of
an epoch is drawn up front from the epoch's generator (the order, then one seed per example),
so a batch is the same whatever the number of workers, and a run resumed mid-epoch, or split
among ranks, sees the batches an uninterrupted single process sees."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from locallearn.data.dataset import channel_mean_std, scaling_statistics
from locallearn.data.files import DatasetNotFoundError
from locallearn.data.folder import ImageList, find_val_labels, labelled_flat_folder, scan_class_folders
from locallearn.data.loader import check_statistics, normalisation
from locallearn.data.sampling import batch_sizes, check_shard, rank_slices
from locallearn.data.subset import stratified_subset, validation_mask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet's per-channel statistics on the [0, 1] scale, as torchvision's ImageNet models use
them (seed 003 §3.3 gives only the 224×224 size)."""
RESIZE_RATIO = 256 / 224
STATISTICS_SAMPLE = 256
"""Training images a folder dataset's mean and std are estimated from."""
BAD_IMAGE_POLICIES = ("stop", "skip")
STREAMED_DATASETS = ("imagenet", "folder")


class UnreadableImageError(ValueError):
    """An image file that Pillow cannot decode, with ``--bad-images stop``."""


@dataclass(frozen=True)
class StreamedDataset:
    """Image files of a training, a test and optionally a validation split (see `load_streamed`)."""

    name: str
    train: ImageList
    test: ImageList
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    validation: ImageList | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test", "validation"):
            images = getattr(self, split)
            if not isinstance(images, ImageList) and not (split == "validation" and images is None):
                raise ValueError(f"{split} must be an ImageList (see scan_class_folders), got {type(images).__name__}")
        check_image_size(self.image_size)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need one value per RGB channel, got {len(self.mean)} and {len(self.std)}")

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

    def input_statistics(self, scaling: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) a loader subtracts and divides by for ``scaling`` (INPUT_SCALINGS)."""
        return scaling_statistics(scaling, self.mean, self.std)


def load_streamed(name: str, data_dir: str | Path | None, *, image_size: int = 224, seed: int = 0,
                  train_subset: int | None = None, validation: int = 0, bad_images: str = "stop") -> StreamedDataset:
    """The image tree in ``data_dir``: train/<class>/* and val/<class>/* (or test/), or a flat
    val/ labelled by a CSV or the ILSVRC2012 devkit's ground truth (see `labelled_flat_folder`;
    looked for in ``data_dir``). "imagenet" normalises with ImageNet's statistics; "folder"
    estimates them from STATISTICS_SAMPLE training images (``bad_images`` as `StreamingLoader`'s).
    ``train_subset`` and ``validation`` draw from the training images as `load_dataset` does."""
    if data_dir is None:
        raise DatasetNotFoundError(f"dataset {name!r} streams from an image tree: give its directory with "
                                   "--data-dir DIR (DIR/train/<class>/*.JPEG and DIR/val/)")
    if name not in STREAMED_DATASETS:
        raise ValueError(f"unknown streamed dataset {name!r}; choose one of {', '.join(STREAMED_DATASETS)}")
    check_bad_images(bad_images)
    check_image_size(image_size)
    root = Path(data_dir).expanduser()
    train = scan_class_folders(root / "train")
    test = _held_out_split(root, train.classes)
    if train_subset is not None:
        train = train.subset(stratified_subset(train.labels, train_subset, seed))
    held_out = None
    if validation:
        mask = validation_mask(train.labels, validation, seed)
        train, held_out = train.subset(torch.nonzero(~mask)[:, 0]), train.subset(torch.nonzero(mask)[:, 0])
    if name == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = _estimate_statistics(train, image_size, seed, bad_images)
    return StreamedDataset(name, train, test, image_size, mean, std, held_out)


def _held_out_split(root: Path, classes: tuple[str, ...]) -> ImageList:
    for folder_name in ("val", "test"):
        folder = root / folder_name
        if not folder.is_dir():
            continue
        if any(entry.is_dir() for entry in folder.iterdir()):
            return scan_class_folders(folder, classes)
        labels_file = find_val_labels(root)
        if labels_file is None:
            raise DatasetNotFoundError(f"{folder} is flat (no class folders) and no labels file was found in {root}: "
                                       "put one of LOC_val_solution.csv, val_labels.csv (file name, class) or the "
                                       "devkit's ILSVRC2012_validation_ground_truth.txt with its meta.mat there, "
                                       "or sort the images into val/<class>/")
        return labelled_flat_folder(folder, labels_file, classes)
    raise DatasetNotFoundError(f"{root} has no val/ or test/ folder beside train/")


def check_bad_images(bad_images: object) -> None:
    """ValueError unless ``bad_images`` is one of BAD_IMAGE_POLICIES."""
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {bad_images!r}")


def check_image_size(image_size: object) -> None:
    """ValueError unless ``image_size`` is an int ≥ 8 (the smallest side the views are cut to)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")


def _estimate_statistics(images: ImageList, image_size: int, seed: int,
                         bad_images: str) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of the evaluation views of STATISTICS_SAMPLE training images."""
    decoded = DecodedImages(images, image_size, bad_images)
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:STATISTICS_SAMPLE]
    views = [item[0] for item in (decoded[index, None] for index in chosen.tolist()) if not isinstance(item, str)]
    return channel_mean_std(torch.stack(views))


def _decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height): a crop of a random share of the area (``scale``) and
    aspect ratio (``ratio``, drawn log-uniformly), ten tries, else the largest centre crop whose
    ratio lies in ``ratio`` (torchvision's RandomResizedCrop.get_params)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            return rng.randint(0, width - crop_width), rng.randint(0, height - crop_height), crop_width, crop_height
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_width, crop_height = round(height * ratio[1]), height
    else:
        crop_width, crop_height = width, height
    return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


def training_view(image: Image.Image, size: int, seed: int) -> Image.Image:
    """The random-resized crop to ``size``×``size`` and flip that ``seed`` draws."""
    rng = random.Random(seed)
    left, top, crop_width, crop_height = random_resized_crop_box(image.width, image.height, rng)
    view = image.resize((size, size), Image.BILINEAR, box=(left, top, left + crop_width, top + crop_height))
    return view.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def evaluation_view(image: Image.Image, size: int) -> Image.Image:
    """Resized so the shorter side is ``size`` × 256/224, then the centre ``size``×``size``."""
    shorter = round(size * RESIZE_RATIO)
    scale = shorter / min(image.width, image.height)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


class DecodedImages(torch.utils.data.Dataset):
    """Item (index, seed) → (uint8 image (3, S, S), label), or the file's path (a str) when it is
    unreadable and ``bad_images`` is "skip"; seed None is the evaluation view."""

    def __init__(self, images: ImageList, image_size: int, bad_images: str) -> None:
        self.images, self.image_size, self.bad_images = images, image_size, bad_images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int | None]):
        index, seed = item
        path = self.images.paths[index]
        try:
            image = _decode(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            if self.bad_images == "stop":
                raise UnreadableImageError(f"{path}: cannot decode this image ({error}); remove or replace it, or "
                                           "pass --bad-images skip to skip and count unreadable files") from None
            return str(path)
        view = evaluation_view(image, self.image_size) if seed is None else training_view(image, self.image_size, seed)
        return _to_tensor(view), int(self.images.labels[index])


def _collate(items: list) -> tuple[Tensor, Tensor, list[str]]:
    """A batch of the readable items and the paths of the unreadable ones."""
    unreadable = [item for item in items if isinstance(item, str)]
    readable = [item for item in items if not isinstance(item, str)]
    if not readable:
        raise UnreadableImageError(f"every image of a batch is unreadable, e.g. {unreadable[0]}")
    return (torch.stack([image for image, _ in readable]), torch.tensor([label for _, label in readable]),
            unreadable)


class StreamingLoader:
    """Batches of (float32 normalised images (B, 3, S, S), int64 labels (B,)) on ``device``,
    decoded from ``images`` by ``workers`` DataLoader processes (0: in this one), in the order
    and with the sharding of `DeviceLoader` (rank r of ``shard`` = (r, ranks) gets the r-th
    slice of every global batch of ``batch_size`` × ranks). Batches travel as uint8 (pinned on
    CUDA, copied without blocking) and are normalised on the device. ``bad_images``: "stop"
    raises on an unreadable file, "skip" drops it from its batch and counts it
    (``skipped_images``, with a warning naming it)."""

    def __init__(self, images: ImageList, *, image_size: int, batch_size: int, device: torch.device | str,
                 mean: Sequence[float], std: Sequence[float], augment: bool = True, shuffle: bool = True,
                 drop_last: bool = False, shard: tuple[int, int] = (0, 1), workers: int = 4,
                 bad_images: str = "stop", prefetch: int = 4) -> None:
        check_bad_images(bad_images)
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an integer >= 1, got {prefetch!r}")
        check_image_size(image_size)
        check_statistics(mean, std, 3)
        self.rank, self.ranks = rank, ranks = check_shard(shard)
        self._batch_sizes = batch_sizes(len(images), batch_size * ranks, drop_last)
        if not self._batch_sizes:
            raise ValueError(f"drop_last with batch_size {batch_size} × {ranks} rank(s) > {len(images)} images "
                             "leaves no batch")
        self.device = torch.device(device)
        self.augment, self.shuffle, self.workers, self.prefetch = augment, shuffle, workers, prefetch
        self.skipped_images = 0
        self._dataset = DecodedImages(images, image_size, bad_images)
        self._scale, self._shift = normalisation(mean, std, pixel_scale=255.0, device=self.device)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._batch_sizes)

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass, from batch ``start`` on; the order and every example's augmentation seed are
        drawn now from ``generator`` (needed when the loader shuffles or augments)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be a batch index in [0, {len(self)}], got {start}")
        if generator is None and (self.shuffle or self.augment):
            raise ValueError("this loader shuffles or augments: pass a torch.Generator to epoch()")
        count = sum(self._batch_sizes)
        cpu = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=generator, device=generator.device))
                                            ) if generator is not None else None
        order = torch.randperm(len(self._dataset), generator=cpu)[:count] if self.shuffle else torch.arange(count)
        seeds = torch.randint(2**62, (count,), generator=cpu).tolist() if self.augment else [None] * count
        return self._batches(order.tolist(), seeds, start)

    def _batches(self, order: list[int], seeds: list, first_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        batches = [list(zip(order[rows], seeds[rows]))
                   for rows in rank_slices(self._batch_sizes, self.rank, self.ranks, first_batch)]
        if not batches:
            return
        pin = self.device.type == "cuda"
        # A generator of its own: DataLoader draws its workers' base seed from it (unused: every random
        # number is drawn above), not from the global RNG that dropout and noise draw from.
        loader = DataLoader(self._dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=_collate,
                            pin_memory=pin, prefetch_factor=self.prefetch if self.workers else None,
                            generator=torch.Generator())
        for images, labels, unreadable in loader:
            for path in unreadable:
                warnings.warn(f"skipped an unreadable image: {path}", stacklevel=2)
            self.skipped_images += len(unreadable)
            images = images.to(self.device, non_blocking=pin)
            labels = labels.to(self.device, non_blocking=pin)
            yield images.to(torch.float32) * self._scale - self._shift, labels
