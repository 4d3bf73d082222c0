"""Streaming loader throughput: images/s that `locallearn.data.StreamingLoader` decodes (Pillow),
crops, flips and batches, for each number of DataLoader workers, on the CPU, with no training.

Without ``--data-dir`` it writes a tree of JPEG files of ImageNet's typical size (500×375,
quality 90, random smooth content) and reads that:

    python benchmarks/bench_loader.py --workers 0 1 2 --images 512 --json bench_loader.json

With ``--data-dir DIR`` (an ImageNet or ImageFolder tree) it reads the first ``--images`` of
DIR/train. Each count is timed over ``--repeats`` passes after one warm-up pass; the median is
reported, with images/s per worker (per process for 0 workers, which decodes in the main one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import device_name, versions
from PIL import Image

from locallearn import data
from locallearn.data.folder import scan_class_folders
from locallearn.data.stream import IMAGENET_MEAN, IMAGENET_STD


def write_tree(root: Path, count: int, classes: int = 4, size: tuple[int, int] = (500, 375)) -> None:
    """``count`` JPEG files in ``classes`` class folders under root/train: random low-frequency
    colour fields upsampled to ``size`` (compressible like photographs, not like noise)."""
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / "train" / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        noise = rng.normal(0, 8, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(coarse.resize(size, Image.BICUBIC), dtype=np.float64) + noise, 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:06d}.JPEG", quality=90)


def images_per_second(images, workers: int, batch_size: int, image_size: int, repeats: int) -> list[float]:
    loader = data.StreamingLoader(images, image_size=image_size, batch_size=batch_size, device="cpu",
                                  mean=IMAGENET_MEAN, std=IMAGENET_STD, workers=workers)
    rates = []
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        count = sum(len(labels) for _, labels in loader.epoch(torch.Generator().manual_seed(repeat)))
        if repeat:  # the first pass warms up (worker start, file cache)
            rates.append(count / (time.perf_counter() - started))
    return rates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=512, help="images per pass")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up one")
    parser.add_argument("--data-dir", help="an image tree to read (default: a generated one)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data_dir) if args.data_dir else Path(scratch)
        if not args.data_dir:
            write_tree(root, args.images)
        images = scan_class_folders(root / "train")
        images = images.subset(torch.arange(min(args.images, len(images))))
        rows = []
        for workers in args.workers:
            rates = images_per_second(images, workers, args.batch_size, args.image_size, args.repeats)
            median = statistics.median(rates)
            rows.append({"workers": workers, "images_per_s": median, "per_worker": median / max(workers, 1),
                         "passes": rates})
    print(f"{'workers':>7} {'images/s':>9} {'per worker':>10}")
    for row in rows:
        print(f"{row['workers']:>7} {row['images_per_s']:>9.0f} {row['per_worker']:>10.0f}")
    result = {"benchmark": "loader", "images": len(images), "source": args.data_dir or "generated 500x375 JPEG q90",
              "batch_size": args.batch_size, "image_size": args.image_size, "device": device_name(torch.device("cpu")),
              **versions(), "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
