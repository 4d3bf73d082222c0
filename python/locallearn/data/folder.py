"""Image files in class folders (the layout torchvision's ImageFolder reads: ROOT/<class>/*.JPEG),
and ImageNet's flat validation folder labelled by a CSV or the ILSVRC2012 devkit."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from locallearn.data.files import DatasetNotFoundError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff")
"""File endings read as images (any case); other files in a class folder are ignored."""
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.csv", "ILSVRC2012_validation_ground_truth.txt")
"""Label files looked for, in the data directory and its devkit's data/, when val/ is flat."""
DEVKIT_FOLDERS = ("", "ILSVRC2012_devkit_t12/data", "devkit/data")


@dataclass(frozen=True)
class ImageList:
    """Image files and their labels (indices into ``classes``, the sorted class-folder names)."""

    paths: tuple[Path, ...]
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Tensor) -> ImageList:
        """The images at ``indices``."""
        return ImageList(tuple(self.paths[i] for i in indices.tolist()), self.labels[indices], self.classes)


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def scan_class_folders(root: Path, classes: tuple[str, ...] | None = None) -> ImageList:
    """The images under ``root``/<class>/, labelled by the class folder's place among the
    sorted folder names (or among ``classes``, the training set's, for a held-out split).
    A missing root, no class folders, an empty class folder or (with ``classes``) a folder
    the training set lacks is an error that names them."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} is not a directory")
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not folders:
        raise DatasetNotFoundError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    if classes is None:
        classes = tuple(folders)
    unknown = [name for name in folders if name not in classes]
    if unknown:
        raise ValueError(f"{root} has class folders the training set lacks: {', '.join(unknown[:10])}"
                         f"{' …' if len(unknown) > 10 else ''}")
    index = {name: label for label, name in enumerate(classes)}
    paths, labels, empty = [], [], []
    for name in folders:
        files = sorted(path for path in (root / name).iterdir() if is_image(path))
        if not files:
            empty.append(name)
        paths += files
        labels += [index[name]] * len(files)
    if empty:
        raise ValueError(f"{root}: {len(empty)} class folder(s) hold no image files ({', '.join(IMAGE_SUFFIXES)}): "
                         f"{', '.join(empty[:10])}{' …' if len(empty) > 10 else ''}")
    return ImageList(tuple(paths), torch.tensor(labels, dtype=torch.int64), classes)


def labelled_flat_folder(folder: Path, labels_file: Path, classes: tuple[str, ...]) -> ImageList:
    """The images of a flat ``folder`` labelled by ``labels_file``: a CSV whose rows are
    (file name with or without its ending, class name as the first word of the second
    column; a header row is skipped), which covers Kaggle's LOC_val_solution.csv, or the
    devkit's ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012_ID per line for the
    sorted file names), mapped to class names by the devkit's meta.mat beside it."""
    files = sorted(path for path in folder.iterdir() if is_image(path))
    if not files:
        raise DatasetNotFoundError(f"{folder} holds no image files and no class folders")
    if labels_file.suffix == ".txt":
        names = _devkit_class_names(labels_file, len(files))
    else:
        by_stem = _csv_class_names(labels_file, classes)
        missing = [path.name for path in files if path.stem not in by_stem and path.name not in by_stem]
        if missing:
            raise ValueError(f"{labels_file} has no label for {len(missing)} image(s) of {folder}, e.g. {missing[0]}")
        names = [by_stem.get(path.stem, by_stem.get(path.name)) for path in files]
    unknown = sorted({name for name in names if name not in classes})
    if unknown:
        raise ValueError(f"{labels_file} names classes the training set lacks: {', '.join(unknown[:10])}")
    index = {name: label for label, name in enumerate(classes)}
    return ImageList(tuple(files), torch.tensor([index[name] for name in names], dtype=torch.int64), classes)


def find_val_labels(data_dir: Path) -> Path | None:
    """The first of VAL_LABEL_FILES in ``data_dir`` or its devkit's data folder, if any."""
    for folder in DEVKIT_FOLDERS:
        for name in VAL_LABEL_FILES:
            if (data_dir / folder / name).is_file():
                return data_dir / folder / name
    return None


def _csv_class_names(labels_file: Path, classes: tuple[str, ...]) -> dict[str, str]:
    with open(labels_file, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and (len(rows[0]) < 2 or not rows[0][1].split() or rows[0][1].split()[0] not in classes):
        rows = rows[1:]  # a header
    bad = [index for index, row in enumerate(rows) if len(row) < 2 or not row[1].split()]
    if bad:
        raise ValueError(f"{labels_file}: row {bad[0] + 1} is not 'file name, class name'")
    return {row[0].strip(): row[1].split()[0] for row in rows}


def _devkit_class_names(ground_truth: Path, count: int) -> list[str]:
    meta = ground_truth.with_name("meta.mat")
    if not meta.is_file():
        raise DatasetNotFoundError(f"{ground_truth} numbers the classes by ILSVRC2012_ID; the devkit's meta.mat, "
                                   f"which names them, must lie beside it ({meta})")
    from scipy.io import loadmat  # scikit-learn's dependency; needed only here

    synsets = loadmat(meta, squeeze_me=True)["synsets"]
    wnid_of = {int(synset["ILSVRC2012_ID"]): str(synset["WNID"]) for synset in synsets}
    ids = [int(line) for line in ground_truth.read_text().split()]
    if len(ids) != count:
        raise ValueError(f"{ground_truth} labels {len(ids)} images but the validation folder holds {count}")
    unknown = sorted(set(ids) - set(wnid_of))
    if unknown:
        raise ValueError(f"{ground_truth}: ILSVRC2012_IDs {unknown[:10]} are not in {meta}")
    return [wnid_of[i] for i in ids]
