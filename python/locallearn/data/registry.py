"""`load_dataset`: every dataset by name, from local files only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from locallearn.data.cifar import load_cifar10, load_cifar100
from locallearn.data.dataset import Dataset
from locallearn.data.digits import Split, load_digits
from locallearn.data.mnist import load_mnist_family
from locallearn.data.stl10 import load_stl10
from locallearn.data.stream import STREAMED_DATASETS
from locallearn.data.subset import stratified_subset, validation_mask
from locallearn.data.svhn import load_svhn
from locallearn.data.synthetic import make_synthetic

_FILE_LOADERS: dict[str, Callable[[str | Path | None], Split]] = {
    "mnist": lambda data_dir: load_mnist_family("mnist", data_dir),
    "fashion-mnist": lambda data_dir: load_mnist_family("fashion-mnist", data_dir),
    "kmnist": lambda data_dir: load_mnist_family("kmnist", data_dir),
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "stl10": load_stl10,
}
DATASET_NAMES = (*_FILE_LOADERS, "digits", "synthetic", *STREAMED_DATASETS)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    train_subset: int | None = None,
    validation: int = 0,
    **synthetic_options,
) -> Dataset:
    """The dataset ``name`` (one of ``DATASET_NAMES``) read from ``data_dir``.

    Image files give uint8 images, "digits" (scikit-learn's, split 70/30 by ``seed``)
    and "synthetic" float32 ones in [0, 1]. ``synthetic_options`` (input_shape,
    num_classes, train_size, test_size) configure "synthetic", generated from
    ``seed``. ``train_subset=N`` keeps N training examples drawn by ``seed`` with the
    class proportions kept; ``validation=N`` then holds N more of them out, drawn the
    same way, as the validation split (seed 002 §4 holds out 2,000 of Fashion-MNIST's).
    Mean and std are computed over the training set kept. Missing files raise
    DatasetNotFoundError: nothing is downloaded."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name in STREAMED_DATASETS:
        raise ValueError(f"{name!r} is streamed from its files, not held in memory: use load_streamed")
    if synthetic_options and name != "synthetic":
        raise ValueError(f"options {sorted(synthetic_options)} only apply to the 'synthetic' dataset, not {name!r}")
    if name == "synthetic":
        split = make_synthetic(seed=seed, **synthetic_options)
    elif name == "digits":
        split = load_digits(seed=seed)
    else:
        split = _FILE_LOADERS[name](data_dir)
    if train_subset is not None:
        kept = stratified_subset(split.y_train, train_subset, seed)
        split = split._replace(x_train=split.x_train[kept], y_train=split.y_train[kept])
    if not validation:
        return Dataset.from_split(name, split)
    held_out = validation_mask(split.y_train, validation, seed)
    kept = split._replace(x_train=split.x_train[~held_out], y_train=split.y_train[~held_out])
    return Dataset.from_split(name, kept, (split.x_train[held_out], split.y_train[held_out]))
