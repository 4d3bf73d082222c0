"""The streaming image-tree reader (ImageNet / ImageFolder layouts) on generated trees of real
JPEG and PNG files: scanning and its errors, flat validation folders labelled by a CSV or the
ILSVRC2012 devkit, the crops, the loader's determinism and sharding, unreadable files, and
short training runs."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import interrupt_at_step, load_benchmark
from PIL import Image

from locallearn import data, engine
from locallearn.analysis.report import collect_activations
from locallearn.data.folder import scan_class_folders
from locallearn.data.stream import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    evaluation_view,
    random_resized_crop_box,
    training_view,
)
from locallearn.engine import TrainSettings

CLASSES = ("n01440764", "n01443537", "n01484850")


def write_image(path, rng, level: int, mode: str = "RGB") -> None:
    """An image of odd size whose pixels centre on ``level`` (classes differ by brightness)."""
    width, height = int(rng.integers(24, 97)), int(rng.integers(24, 97))
    pixels = np.clip(rng.normal(level, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/<wnid>/ with 12 images per class (JPEG, one grey PNG, one RGBA PNG, a text file) and
    val/<wnid>/ with 4; one corrupt JPEG in the first training class."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4)):
        for label, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for index in range(count):
                write_image(folder / f"{wnid}_{index}.JPEG", rng, 50 + 80 * label)
            if split == "train":
                write_image(folder / f"{wnid}_grey.png", rng, 50 + 80 * label, "L")
                write_image(folder / f"{wnid}_alpha.png", rng, 50 + 80 * label, "RGBA")
                (folder / "notes.txt").write_text("not an image")
    (root / "train" / CLASSES[0] / "corrupt.JPEG").write_bytes(b"\xff\xd8 truncated, not a JPEG")
    return root


def test_scan_labels_images_by_their_sorted_class_folder(tree):
    images = scan_class_folders(tree / "train")
    assert images.classes == CLASSES
    assert len(images) == 3 * 14 + 1  # 12 JPEG + 2 PNG per class, the corrupt JPEG; notes.txt ignored
    for path, label in zip(images.paths, images.labels.tolist()):
        assert path.parent.name == CLASSES[label]


def test_empty_or_missing_class_folders_are_named(tmp_path, tree):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"2 class folder\(s\) hold no image files.*a, b"):
        scan_class_folders(tmp_path / "train")
    with pytest.raises(data.DatasetNotFoundError, match="no class folders"):
        scan_class_folders(tmp_path / "train" / "a")
    with pytest.raises(data.DatasetNotFoundError, match="--data-dir"):
        data.load_streamed("imagenet", None)
    with pytest.raises(data.DatasetNotFoundError, match="no val/ or test/"):
        data.load_streamed("imagenet", _tree_without_val(tmp_path, tree))


def _tree_without_val(tmp_path, tree):
    root = tmp_path / "no-val"
    (root / "train").mkdir(parents=True)
    (root / "train" / CLASSES[0]).symlink_to(tree / "train" / CLASSES[0], target_is_directory=True)
    return root


def _flat_val_tree(tmp_path, tree):
    """train/ linked from ``tree``; val/ flat, ILSVRC2012_val_%08d.JPEG, classes 2, 0, 1, 2."""
    root = tmp_path / "flat"
    (root / "val").mkdir(parents=True)
    (root / "train").symlink_to(tree / "train", target_is_directory=True)
    rng = np.random.default_rng(1)
    labels = [2, 0, 1, 2]
    for index, label in enumerate(labels):
        write_image(root / "val" / f"ILSVRC2012_val_{index + 1:08d}.JPEG", rng, 50 + 80 * label)
    return root, labels


def test_flat_val_folder_labelled_by_a_csv(tmp_path, tree):
    root, labels = _flat_val_tree(tmp_path, tree)
    with pytest.raises(data.DatasetNotFoundError, match="flat"):
        data.load_streamed("imagenet", root)
    rows = [f"ILSVRC2012_val_{index + 1:08d},{CLASSES[label]} 12 34 56 78" for index, label in enumerate(labels)]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    dataset = data.load_streamed("imagenet", root)
    assert dataset.test.labels.tolist() == labels
    assert [path.name for path in dataset.test.paths] == sorted(path.name for path in (root / "val").iterdir())


def test_flat_val_folder_labelled_by_the_devkit(tmp_path, tree):
    from scipy.io import savemat

    root, labels = _flat_val_tree(tmp_path, tree)
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    # The devkit numbers synsets in its own order, not the sorted WNIDs': here 1, 2, 3 = classes 1, 2, 0.
    ilsvrc_id = {CLASSES[1]: 1, CLASSES[2]: 2, CLASSES[0]: 3}
    synsets = np.array([(ilsvrc_id[wnid], wnid, wnid) for wnid in CLASSES],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    savemat(devkit / "meta.mat", {"synsets": synsets})
    ground_truth = devkit / "ILSVRC2012_validation_ground_truth.txt"
    ground_truth.write_text("\n".join(str(ilsvrc_id[CLASSES[label]]) for label in labels) + "\n")
    assert data.load_streamed("imagenet", root).test.labels.tolist() == labels
    ground_truth.write_text("1\n2\n")
    with pytest.raises(ValueError, match="labels 2 images but the validation folder holds 4"):
        data.load_streamed("imagenet", root)


def test_random_resized_crop_draws_torchvisions_distribution():
    rng = random.Random(0)
    areas, ratios = [], []
    for _ in range(2000):
        left, top, width, height = random_resized_crop_box(400, 300, rng)
        assert 0 <= left and left + width <= 400 and 0 <= top and top + height <= 300
        areas.append(width * height / (400 * 300))
        ratios.append(math.log(width / height))
    assert min(areas) > 0.07 and max(areas) <= 1.0
    assert math.log(3 / 4) - 0.02 <= min(ratios) and max(ratios) <= math.log(4 / 3) + 0.02
    # A long thin image admits no crop in ten tries: the centre crop at the nearest ratio.
    assert random_resized_crop_box(1000, 10, random.Random(0), scale=(0.9, 1.0)) == (493, 0, 13, 10)


def test_views_have_the_crop_size_and_the_evaluation_view_is_the_centre():
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    pixels[140:160, 190:210] = 255  # a white square at the centre
    image = Image.fromarray(pixels)
    view = np.asarray(evaluation_view(image, 64))
    assert view.shape == (64, 64, 3)
    white = np.argwhere(view[..., 0] > 128)
    assert np.allclose(white.mean(0), (31.5, 31.5), atol=1.0)
    assert np.asarray(training_view(image, 32, seed=5)).shape == (32, 32, 3)
    assert np.array_equal(np.asarray(training_view(image, 32, seed=5)), np.asarray(training_view(image, 32, seed=5)))


def _batches(loader, seed=3, start=0):
    generator = torch.Generator().manual_seed(seed)
    return [(x.clone(), y.clone()) for x, y in loader.epoch(generator, start=start)]


def _loader(dataset, **options):
    settings = dict(image_size=24, batch_size=4, device="cpu", mean=dataset.mean, std=dataset.std,
                    bad_images="skip", workers=0, drop_last=True)
    return data.StreamingLoader(dataset.train, **{**settings, **options})


@pytest.mark.filterwarnings("ignore:skipped an unreadable image")
def test_batches_do_not_depend_on_workers_and_shard_like_one_process(tree):
    dataset = data.load_streamed("folder", tree, image_size=24, bad_images="skip")
    single = _batches(_loader(dataset))
    assert len(single) == 43 // 4
    in_workers = _batches(_loader(dataset, workers=2))
    for (x, y), (x2, y2) in zip(single, in_workers, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # 2 ranks × batch 2: rank r gets the r-th half of each of the single process's batches.
    ranks = [_batches(_loader(dataset, batch_size=2, shard=(rank, 2))) for rank in range(2)]
    for batch, (x, y), (x0, y0), (x1, y1) in zip(range(len(single)), single, *ranks, strict=True):
        if len(y) == 4:  # the batch holding the corrupt file is one short, and so is its rank's half
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y), batch
    tail = _batches(_loader(dataset), start=5)
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(single[5:], tail, strict=True))
    assert not torch.equal(single[0][0], _batches(_loader(dataset), seed=4)[0][0])


def test_normalisation_is_imagenets_or_estimated_from_the_training_images(tree):
    assert data.load_streamed("imagenet", tree, image_size=24, bad_images="skip").mean == IMAGENET_MEAN
    dataset = data.load_streamed("folder", tree, image_size=24, bad_images="skip")
    assert dataset.std != IMAGENET_STD
    loader = data.StreamingLoader(dataset.test, image_size=24, batch_size=100, device="cpu", mean=dataset.mean,
                                  std=dataset.std, augment=False, shuffle=False, workers=0)
    (images, labels), = loader.epoch()
    assert images.shape == (12, 3, 24, 24) and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert abs(images.mean().item()) < 0.5  # standardised with the training images' statistics


def test_an_unreadable_image_stops_the_run_naming_it_or_is_skipped_and_counted(tree):
    with pytest.raises(data.UnreadableImageError, match=r"corrupt\.JPEG: cannot decode.*--bad-images skip"):
        data.load_streamed("folder", tree, image_size=24)
    dataset = data.load_streamed("imagenet", tree, image_size=24)  # no statistics to estimate
    with pytest.raises(data.UnreadableImageError, match=r"corrupt\.JPEG"):
        _batches(_loader(dataset, bad_images="stop", workers=1))
    loader = _loader(dataset)
    with pytest.warns(UserWarning, match=r"skipped an unreadable image: .*corrupt\.JPEG"):
        batches = _batches(loader)
    assert loader.skipped_images == 1
    assert sum(len(y) for _, y in batches) == 4 * len(batches) - 1


@pytest.mark.filterwarnings("ignore:skipped an unreadable image")
@pytest.mark.parametrize("name,model", [("imagenet", "allcnn-c-short"), ("folder", "lc-imagenet")])
def test_a_short_run_trains_on_the_tree(tree, tmp_path, name, model):
    settings = TrainSettings(rule="backprop", model=model, data=name, data_dir=str(tree), image_size=32 if
                             model == "allcnn-c-short" else 40, epochs=2, batch_size=8, lr=2e-3, workers=1,
                             bad_images="skip", validation=6, width_multiplier=0.25,
                             run_dir=str(tmp_path / "run"))
    engine.start_run(settings, progress=False).fit()
    records = [record for record in engine.read_metrics(tmp_path / "run") if record["kind"] == "epoch"]
    assert len(records) == 2 and records[-1]["skipped_images"] >= 1
    assert "validation_error" in records[-1] and 0 <= records[-1]["test_error"] <= 1
    if model == "allcnn-c-short":  # the classes differ in brightness: learnt in two epochs
        assert records[-1]["test_error"] < 0.5
        analysed = collect_activations(tmp_path / "run", max_samples=10)  # `locallearn analyze` reads it too
        assert analysed.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 2
        assert all(len(layer) == 10 for layer in analysed.layers)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2


def test_loader_benchmark_times_every_worker_count(tmp_path):
    result = load_benchmark("bench_loader").main(["--workers", "0", "1", "--images", "16", "--batch-size", "8",
                                                  "--image-size", "32", "--repeats", "2",
                                                  "--json", str(tmp_path / "loader.json")])
    assert [row["workers"] for row in result["runs"]] == [0, 1]
    assert all(len(row["passes"]) == 2 and row["images_per_s"] > 0 for row in result["runs"])
    assert json.loads((tmp_path / "loader.json").read_text())["device"] == result["device"]



@pytest.mark.filterwarnings("ignore:skipped an unreadable image")
def test_a_streamed_run_stopped_mid_epoch_resumes_there_and_ends_as_an_uninterrupted_one(tree, tmp_path):
    def settings(name: str):  # dropout: the RNG state must come back too
        return TrainSettings(rule="backprop", model="allcnn-c-short", data="folder", data_dir=str(tree),
                             image_size=24, epochs=2, batch_size=4, workers=1, bad_images="skip", dropout=0.2,
                             width_multiplier=0.25, checkpoint_every=3, run_dir=str(tmp_path / name))

    engine.start_run(settings("whole"), progress=False).fit()
    trainer = engine.start_run(settings("stopped"), progress=False)
    interrupt_at_step(trainer, 15)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    state = engine.load_checkpoint(tmp_path / "stopped" / engine.CHECKPOINT_NAME)
    assert state["step"] == 12 and state["epoch"] == 1  # 10 steps per epoch: 2 into the second
    engine.resume_run(tmp_path / "stopped", progress=False).fit()
    for name in ("whole", "stopped"):
        assert engine.load_checkpoint(tmp_path / name / engine.CHECKPOINT_NAME)["step"] == 20
    whole, stopped = (engine.load_checkpoint(tmp_path / name / engine.CHECKPOINT_NAME)["rule"]["modules"]
                      for name in ("whole", "stopped"))
    for key, value in whole.items():
        assert torch.equal(stopped[key], value), key

    def records(name):
        untimed = ("images_per_s", "train_seconds", "peak_memory_mb", "skipped_images")
        return [{key: value for key, value in record.items() if key not in untimed}
                for record in engine.read_metrics(tmp_path / name) if record["kind"] == "epoch"]

    assert records("stopped") == records("whole")
