"""locallearn.data: file readers on tiny files written here (and the real
Fashion-MNIST where Debian's package is installed), on-device batches, augmentation."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from locallearn.data import (
    DATASET_NAMES,
    Augmentation,
    Dataset,
    DatasetNotFoundError,
    DeviceLoader,
    default_augmentation,
    load_dataset,
    load_digits,
)
from locallearn.data.dataset import channel_mean_std

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzipped when the name ends in .gz."""
    content = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)


def write_mnist(directory: Path, suffix: str = "", seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny MNIST-format files: 7 training and 3 test images of 5×4 pixels."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (7, 5, 4), dtype=np.uint8),
        IDX_NAMES[1]: rng.integers(0, 10, 7, dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (3, 5, 4), dtype=np.uint8),
        IDX_NAMES[3]: rng.integers(0, 10, 3, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / (name + suffix), array)
    return arrays


def float_loader(images, labels=None, **options) -> DeviceLoader:
    """A CPU loader that leaves float images unchanged apart from augmentation."""
    labels = torch.zeros(len(images), dtype=torch.int64) if labels is None else labels
    channels = images.shape[1]
    options = {"batch_size": 4, "device": "cpu", "shuffle": False, **options}
    return DeviceLoader(images, labels, mean=(0.0,) * channels, std=(1.0,) * channels, **options)


def one_epoch(loader: DeviceLoader, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader.epoch(torch.Generator().manual_seed(seed)))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def shifted(image: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """image (C, H, W) moved down/right, zero-filled."""
    height, width = image.shape[1:]
    result = torch.zeros_like(image)
    result[:, max(down, 0) : height + min(down, 0), max(right, 0) : width + min(right, 0)] = image[
        :, max(-down, 0) : height + min(-down, 0), max(-right, 0) : width + min(-right, 0)
    ]
    return result


def positive_images(count: int, shape=(2, 9, 7), seed: int = 0) -> torch.Tensor:
    """Float images with no zero pixel and no symmetry, so every transform shows."""
    return torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed)) * 0.9 + 0.1


# --- the real Fashion-MNIST ---------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_mnist():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return load_dataset("fashion-mnist")


def test_real_fashion_mnist(fashion_mnist):
    assert fashion_mnist.x_train.shape == (60000, 1, 28, 28) and fashion_mnist.x_test.shape == (10000, 1, 28, 28)
    assert fashion_mnist.x_train.dtype == torch.uint8 and fashion_mnist.y_train.dtype == torch.int64
    assert fashion_mnist.input_shape == (1, 28, 28) and fashion_mnist.num_classes == 10
    assert fashion_mnist.y_train.bincount().tolist() == [6000] * 10
    assert fashion_mnist.y_test.bincount().tolist() == [1000] * 10
    assert fashion_mnist.mean[0] == pytest.approx(0.286, abs=0.002)
    assert fashion_mnist.std[0] == pytest.approx(0.353, abs=0.002)


# --- IDX files ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "name, folder",
    [("mnist", ""), ("kmnist", "kmnist"), ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")],
)
def test_idx_round_trip(tmp_path, suffix, name, folder):
    arrays = write_mnist(tmp_path / folder, suffix)
    dataset = load_dataset(name, tmp_path)
    assert dataset.name == name and dataset.num_classes == 10 and dataset.input_shape == (1, 5, 4)
    assert dataset.x_train.dtype == torch.uint8 and dataset.y_train.dtype == torch.int64
    assert torch.equal(dataset.x_train, torch.from_numpy(arrays[IDX_NAMES[0]]).unsqueeze(1))
    assert torch.equal(dataset.y_train, torch.from_numpy(arrays[IDX_NAMES[1]]).long())
    assert torch.equal(dataset.x_test, torch.from_numpy(arrays[IDX_NAMES[2]]).unsqueeze(1))
    assert torch.equal(dataset.y_test, torch.from_numpy(arrays[IDX_NAMES[3]]).long())


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def wrong_magic(path: Path) -> None:
    path.write_bytes(b"\x00\x00\x08\x04" + path.read_bytes()[4:])


def corrupt_gzip(path: Path) -> None:
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes())[:40] + b"not deflate data" * 4)
    path.unlink()


def label_out_of_range(path: Path) -> None:
    write_idx(path, np.array([3, 10, 0, 1, 2, 3, 4], dtype=np.uint8))


def count_mismatch(path: Path) -> None:
    write_idx(path, np.zeros(6, dtype=np.uint8))


@pytest.mark.parametrize(
    "damage, file_name, complaint",
    [
        (truncate, IDX_NAMES[0], "truncated"),
        (wrong_magic, IDX_NAMES[2], "magic number 0x00000804"),
        (corrupt_gzip, IDX_NAMES[0], "corrupt gzip"),
        (label_out_of_range, IDX_NAMES[1], "label 10"),
        (count_mismatch, IDX_NAMES[1], "7 images"),
    ],
)
def test_idx_damage_is_a_value_error_naming_the_file(tmp_path, damage, file_name, complaint):
    write_mnist(tmp_path)
    damage(tmp_path / file_name)
    with pytest.raises(ValueError, match=complaint) as raised:
        load_dataset("mnist", tmp_path)
    assert file_name in str(raised.value)


def test_missing_dataset_lists_expected_files_and_directories(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / IDX_NAMES[3]).unlink()
    with pytest.raises(DatasetNotFoundError) as raised:
        load_dataset("mnist", tmp_path)
    message = str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)
    assert all(name in message for name in IDX_NAMES)
    assert str(tmp_path) in message and str(tmp_path / "MNIST" / "raw") in message and "--data-dir" in message
    with pytest.raises(DatasetNotFoundError, match="no data directory given"):
        load_dataset("cifar10")


# --- CIFAR, SVHN, STL-10 --------------------------------------------------------------


def cifar_rows(count: int, first_label: int) -> tuple[np.ndarray, list[int]]:
    """Rows whose pixel (channel c, row i, column j) of image n holds (n + 7c + 3i + j) % 256."""
    n, c, i, j = np.meshgrid(np.arange(count), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    pixels = ((n + first_label + 7 * c + 3 * i + j) % 256).astype(np.uint8)
    return pixels.reshape(count, 3072), [(first_label + k) % 10 for k in range(count)]


def cifar_expected(count: int, first_label: int) -> torch.Tensor:
    n, c, i, j = torch.meshgrid(*(torch.arange(s) for s in (count, 3, 32, 32)), indexing="ij")
    return ((n + first_label + 7 * c + 3 * i + j) % 256).to(torch.uint8)


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for number, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_rows(2, first_label=2 * number)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    dataset = load_dataset("cifar10", tmp_path)
    assert dataset.x_train.shape == (10, 3, 32, 32) and dataset.x_test.shape == (2, 3, 32, 32)
    assert torch.equal(dataset.x_train[:2], cifar_expected(2, 0))
    assert torch.equal(dataset.x_test, cifar_expected(2, 10))
    assert dataset.x_train[1, 2, 5, 3].item() == 1 + 14 + 15 + 3  # image 1, blue, row 5, column 3
    assert dataset.y_train.tolist() == list(range(10)) and dataset.y_test.tolist() == [0, 1]


def test_cifar100_pickles_use_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data, _ = cifar_rows(3, first_label=0)
    for name in ("train", "test"):
        batch = {b"data": data, b"fine_labels": [99, 0, 42], b"coarse_labels": [1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    dataset = load_dataset("cifar100", tmp_path)
    assert dataset.num_classes == 100 and dataset.y_train.tolist() == [99, 0, 42]
    assert torch.equal(dataset.x_train, cifar_expected(3, 0))


def test_cifar_bad_pickle_is_a_value_error(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}))
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="train"):
        load_dataset("cifar100", tmp_path)


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    images = np.zeros((32, 32, 3, 4), dtype=np.uint8)  # [row, column, channel, example]
    images[5, 9, :, 2] = (10, 20, 30)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        savemat(tmp_path / name, {"X": images, "y": np.array([[10], [1], [9], [10]], dtype=np.uint8)})
    dataset = load_dataset("svhn", tmp_path)
    assert dataset.x_train.shape == (4, 3, 32, 32) and dataset.x_train.dtype == torch.uint8
    assert dataset.x_train[2, :, 5, 9].tolist() == [10, 20, 30] and dataset.x_train.sum() == 60
    assert dataset.y_train.tolist() == [0, 1, 9, 0]


def test_stl10_binary_files(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    stored = np.zeros((2, 3, 96, 96), dtype=np.uint8)  # each channel stored column-major: [column, row]
    stored[1, :, 7, 40] = (11, 22, 33)  # column 7, row 40
    for split in ("train", "test"):
        stored.tofile(folder / f"{split}_X.bin")
        np.array([10, 1], dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    dataset = load_dataset("stl10", tmp_path)
    assert dataset.x_train.shape == (2, 3, 96, 96) and dataset.input_shape == (3, 96, 96)
    assert dataset.x_train[1, :, 40, 7].tolist() == [11, 22, 33] and dataset.x_train.sum() == 66
    assert dataset.y_train.tolist() == [9, 0]
    np.array([1, 2, 3], dtype=np.uint8).tofile(folder / "test_y.bin")
    with pytest.raises(ValueError, match="test_X.bin holds 2 images"):
        load_dataset("stl10", tmp_path)


# --- load_dataset -------------------------------------------------------------------


def test_load_dataset_rejects_unknown_names_and_misplaced_options():
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        load_dataset("places365")
    with pytest.raises(ValueError, match="streamed from its files.*load_streamed"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="synthetic"):
        load_dataset("digits", num_classes=3)


def test_digits_match_load_digits():
    dataset = load_dataset("digits", seed=3)
    split = load_digits(seed=3)
    assert dataset.input_shape == (1, 8, 8) and dataset.x_train.dtype == torch.float32
    assert torch.equal(dataset.x_train, split.x_train) and torch.equal(dataset.y_test, split.y_test)


def test_synthetic_is_shaped_as_asked_and_learnable():
    dataset = load_dataset("synthetic", seed=5, input_shape=(2, 6, 5), num_classes=7, train_size=700, test_size=210)
    assert dataset.x_train.shape == (700, 2, 6, 5) and dataset.x_test.shape == (210, 2, 6, 5)
    assert dataset.x_train.dtype == torch.float32 and 0 <= dataset.x_train.min() and dataset.x_train.max() <= 1
    assert dataset.num_classes == 7 and dataset.y_train.bincount().tolist() == [100] * 7
    class_means = torch.stack([dataset.x_train[dataset.y_train == label].mean(0) for label in range(7)])
    distances = torch.cdist(dataset.x_test.flatten(1), class_means.flatten(1))
    accuracy = (distances.argmin(1) == dataset.y_test).float().mean().item()
    assert accuracy > 0.6, f"nearest class mean accuracy {accuracy:.2f} (chance 0.14)"
    again = load_dataset("synthetic", seed=5, input_shape=(2, 6, 5), num_classes=7, train_size=700, test_size=210)
    assert torch.equal(again.x_test, dataset.x_test)
    assert load_dataset("synthetic", train_size=10, test_size=10).input_shape == (3, 32, 32)


def test_train_subset_keeps_class_proportions_and_recomputes_statistics():
    options = {"input_shape": (1, 3, 3), "num_classes": 4, "train_size": 400, "test_size": 8}
    full = load_dataset("synthetic", **options)
    subset = load_dataset("synthetic", train_subset=40, **options)
    assert subset.y_train.bincount().tolist() == [10] * 4 and len(subset.y_test) == 8
    assert torch.equal(subset.x_test, full.x_test)
    assert subset.mean[0] == pytest.approx(subset.x_train.double().mean().item())
    assert subset.std[0] == pytest.approx(subset.x_train.double().std(correction=0).item())
    with pytest.raises(ValueError, match="train_subset"):
        load_dataset("synthetic", train_subset=401, **options)


def test_validation_split_is_held_out_of_the_training_set_with_class_proportions():
    """seed 002 §4: "a validation set of 2000 samples from the training split"; the
    statistics come from the training examples kept, and the split is drawn by the seed."""
    options = {"input_shape": (1, 3, 3), "num_classes": 4, "train_size": 400, "test_size": 8}
    full = load_dataset("synthetic", **options)
    split = load_dataset("synthetic", validation=40, **options)
    assert split.y_validation.bincount().tolist() == [10] * 4 and split.y_train.bincount().tolist() == [90] * 4
    rows = {tuple(row.flatten().tolist()) for row in full.x_train}
    kept = [tuple(row.flatten().tolist()) for row in split.x_train]
    held = [tuple(row.flatten().tolist()) for row in split.x_validation]
    assert set(kept) | set(held) == rows and not set(kept) & set(held)
    assert torch.equal(split.x_test, full.x_test)
    assert split.mean[0] == pytest.approx(split.x_train.double().mean().item())
    again = load_dataset("synthetic", validation=40, **options)
    other_seed = load_dataset("synthetic", validation=40, seed=1, **options)
    assert torch.equal(again.x_validation, split.x_validation)
    assert not torch.equal(other_seed.x_validation, split.x_validation)
    assert full.x_validation is None
    with pytest.raises(ValueError, match="validation must hold out between 1 and 399"):
        load_dataset("synthetic", validation=400, **options)


def test_unit_input_scaling_feeds_pixels_over_255():
    """seed 002 §4: pixel values divided by 255, nothing else."""
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    dataset = Dataset("synthetic", images, torch.arange(6) % 2, images, torch.arange(6) % 2, num_classes=2,
                      mean=(0.4,), std=(0.2,))
    for scaling, expected in [("unit", images / 255), ("standardize", (images / 255 - 0.4) / 0.2)]:
        mean, std = dataset.input_statistics(scaling)
        loader = DeviceLoader(images, dataset.y_train, batch_size=6, device="cpu", mean=mean, std=std, shuffle=False)
        (x, _), = loader.epoch(None)
        torch.testing.assert_close(x, expected.float())
    with pytest.raises(ValueError, match="unknown input scaling"):
        dataset.input_statistics("minmax")


def test_uint8_statistics_match_a_float_computation():
    images = torch.randint(0, 256, (20, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = channel_mean_std(images)
    as_float = images.double() / 255
    assert mean == pytest.approx(as_float.mean((0, 2, 3)).tolist())
    assert std == pytest.approx(as_float.std((0, 2, 3), correction=0).tolist())


# --- DeviceLoader: order ------------------------------------------------------------


def test_every_example_once_per_epoch_and_reproducible():
    count, batch_size = 23, 5
    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1)
    loader = float_loader(images, torch.arange(count), batch_size=batch_size, shuffle=True)
    assert len(loader) == 5
    batches = list(loader.epoch(torch.Generator().manual_seed(1)))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    assert sorted(y.tolist()) == list(range(count)) and torch.equal(x.flatten().long(), y)
    assert torch.equal(one_epoch(loader, seed=1)[1], y)
    assert not torch.equal(one_epoch(loader, seed=2)[1], y)

    dropping = float_loader(images, torch.arange(count), batch_size=batch_size, shuffle=True, drop_last=True)
    assert len(dropping) == 4
    assert len(set(one_epoch(dropping)[1].tolist())) == 20


def test_no_shuffle_keeps_the_order_and_needs_no_generator():
    images = positive_images(10)
    loader = float_loader(images, torch.arange(10), batch_size=3)
    batches = list(loader.epoch())
    assert torch.equal(torch.cat([x for x, _ in batches]), images)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(10))


@pytest.mark.parametrize("classes_per_batch", [1, 2, 3, 10])
def test_classes_per_batch_limits_the_classes_of_every_batch(classes_per_batch):
    count, batch_size = 630, 32
    labels = torch.arange(count) % 10
    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1)
    loader = float_loader(images, labels, batch_size=batch_size, shuffle=True, classes_per_batch=classes_per_batch)
    batches = list(loader.epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == len(loader) == 20
    assert [len(y) for _, y in batches] == [32] * 19 + [22]
    for x, y in batches:
        assert len(torch.unique(y)) <= classes_per_batch
        assert torch.equal(labels[x.flatten().long()], y)
    seen = torch.cat([x.flatten() for x, _ in batches]).long()
    assert len(torch.unique(seen)) >= 0.95 * count  # repeats only near the end of the epoch
    if classes_per_batch == 10:  # every class in every batch: an ordinary epoch
        assert sorted(seen.tolist()) == list(range(count))


def test_loader_validates_its_arguments():
    images, labels = positive_images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    for options, complaint in [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 7, "drop_last": True}, "no batch"),
        ({"classes_per_batch": 4, "shuffle": True}, "classes_per_batch"),
        ({"classes_per_batch": 0, "shuffle": True}, "classes_per_batch"),
        ({"classes_per_batch": 2}, "shuffle=True"),
    ]:
        with pytest.raises(ValueError, match=complaint):
            float_loader(images, labels, **options)
    with pytest.raises(ValueError, match="5 labels"):
        float_loader(images, labels[:5])
    with pytest.raises(ValueError, match="one value per channel"):
        DeviceLoader(images, labels, batch_size=2, device="cpu", mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="Generator"):
        float_loader(images, labels, shuffle=True).epoch()
    with pytest.raises(ValueError, match="crop_padding"):
        Augmentation(crop_padding=-1)


# --- DeviceLoader: augmentation and normalisation -------------------------------------


def test_identity_augmentation_changes_nothing():
    images = positive_images(6)
    x, _ = one_epoch(float_loader(images, augmentation=Augmentation(crop_padding=0, horizontal_flip=False, cutout=0)))
    assert torch.equal(x, images)


def test_flip_mirrors_exactly_the_chosen_examples():
    images = positive_images(40)
    x, _ = one_epoch(float_loader(images, augmentation=Augmentation(horizontal_flip=True)))
    flipped = torch.tensor([torch.equal(out, torch.flip(image, dims=[2])) for out, image in zip(x, images)])
    unchanged = torch.tensor([torch.equal(out, image) for out, image in zip(x, images)])
    assert torch.all(flipped ^ unchanged)
    assert 5 <= flipped.sum() <= 35


def test_jitter_is_a_zero_filled_shift_within_the_padding():
    padding = 2
    images = positive_images(40)
    x, _ = one_epoch(float_loader(images, augmentation=Augmentation(crop_padding=padding)))
    shifts = range(-padding, padding + 1)
    used = set()
    for out, image in zip(x, images):
        matches = [(dy, dx) for dy in shifts for dx in shifts if torch.equal(out, shifted(image, dy, dx))]
        assert len(matches) == 1
        used.add(matches[0])
    assert len(used) > 5


def test_cutout_zeroes_a_clipped_square():
    size = 4
    images = positive_images(60, shape=(2, 9, 7))
    x, _ = one_epoch(float_loader(images, augmentation=Augmentation(cutout=size)))
    full_squares = 0
    for out, image in zip(x, images):
        zero = out == 0
        assert torch.equal(zero[0], zero[1]), "the same square in every channel"
        assert torch.equal(out[~zero], image[~zero])
        rows, columns = zero[0].nonzero(as_tuple=True)
        top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
        height, width = bottom - top + 1, right - left + 1
        assert zero[0, top : bottom + 1, left : right + 1].all() and zero[0].sum() == height * width
        assert height <= size and width <= size
        if 0 < top and bottom < 8:
            assert height == size
        if 0 < left and right < 6:
            assert width == size
        full_squares += int(zero[0].sum() == size * size)
    assert full_squares > 0


def test_augmented_epochs_depend_only_on_the_seed():
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    loader = DeviceLoader(
        images, torch.arange(30), batch_size=8, device="cpu", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
        augmentation=Augmentation(crop_padding=2, horizontal_flip=True, cutout=3),
    )
    first, second, other = one_epoch(loader, seed=7), one_epoch(loader, seed=7), one_epoch(loader, seed=8)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_normalisation_is_per_channel():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    labels = torch.zeros(5, dtype=torch.int64)
    loader = DeviceLoader(images, labels, batch_size=5, device="cpu", mean=mean, std=std, shuffle=False)
    (x, y), = loader.epoch()
    expected = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, expected.float(), rtol=1e-6, atol=1e-6)


def test_default_augmentation_follows_the_paper():
    names = {"mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10", "digits", "synthetic"}
    assert set(DATASET_NAMES) == names | {"imagenet", "folder"}  # those two crop as they stream (test_stream)
    for name in names:
        default_augmentation(name)
    assert default_augmentation("mnist") == Augmentation(crop_padding=2)
    assert default_augmentation("fashion-mnist") == Augmentation(crop_padding=2, horizontal_flip=True)
    assert default_augmentation("kmnist") == Augmentation()
    assert default_augmentation("cifar100") == Augmentation(crop_padding=4, horizontal_flip=True)
    assert default_augmentation("stl10") == Augmentation(crop_padding=12, horizontal_flip=True)
    with pytest.raises(ValueError, match="mnist"):
        default_augmentation("imagenet")


@pytest.mark.cuda
def test_a_cpu_generator_gives_the_same_epoch_on_cuda():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    options = {
        "batch_size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3, "classes_per_batch": 2,
        "augmentation": Augmentation(crop_padding=2, horizontal_flip=True, cutout=3),
    }
    labels = torch.arange(50) % 5
    on_cpu = one_epoch(DeviceLoader(images, labels, device="cpu", **options), seed=3)
    on_cuda = one_epoch(DeviceLoader(images, labels, device="cuda", **options), seed=3)
    assert on_cuda[0].is_cuda
    torch.testing.assert_close(on_cuda[0].cpu(), on_cpu[0])
    assert torch.equal(on_cuda[1].cpu(), on_cpu[1])
    cuda_generator = torch.Generator(device="cuda").manual_seed(3)
    assert sum(len(y) for _, y in DeviceLoader(images, labels, device="cuda", **options).epoch(cuda_generator)) == 50
