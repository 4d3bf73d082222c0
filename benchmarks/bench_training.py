"""Training throughput, peak memory and test error of several rules with the same
settings, each a ``locallearn train`` run in its own process, side by side.

The issue-3 device check (VGG8B on Fashion-MNIST, batch 128, 3 epochs, seed 004's
settings) on a GPU:
    python benchmarks/bench_training.py --config configs/vgg8b-fashion-mnist.toml \\
        --epochs 3 --rules backprop predsim --data-dir .data --json bench_training.json
A quick CPU run:
    python benchmarks/bench_training.py --config configs/demo.toml --epochs 1 --rules backprop predsim
``--modes eager compile`` trains each rule twice, the second time with ``--compile``
(the issue-17 device check records both).

Beside the authors' PredSim trainer (anokland/local-loss's train.py, in a checkout of your
own; it needs torchvision), on the issue-17 configuration (training_reference.py):
    python benchmarks/bench_training.py --reference ../local-loss/train.py --rules predsim backprop \
        --epochs 2 --rounds 2 --json bench_training_reference.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
from pathlib import Path

import torch
import training_reference
from common import run_info, versions, write_json

from locallearn import config
from locallearn.engine.compare import format_summaries, train_rules


MODES = ("eager", "compile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML of train settings; its 'rule' key is ignored (not with --reference)")
    parser.add_argument("--reference", type=Path, help="anokland/local-loss's train.py: run it beside locallearn "
                                                       "(eager and --compile) on the 3x1024 MLP, Fashion-MNIST")
    parser.add_argument("--rounds", type=int, default=2, help="--reference: alternating rounds (median reported)")
    parser.add_argument("--device", default="cpu", help="--reference: cpu or cuda")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--data-dir", help="where the dataset's files are (e.g. a carried .data/ folder)")
    parser.add_argument("--rules", nargs="+", default=["backprop", "predsim"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager"],
                        help="config mode: train each rule eagerly, through --compile, or both")
    parser.add_argument("--out", default="runs/bench-training", help="directory for the runs")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.reference is not None:
        compare_with_reference(args)
        return
    if args.config is None:
        parser.error("--config is required (or --reference)")

    settings = {key: value for key, value in config.load_toml(args.config).items() if key != "rule"}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.data_dir is not None:
        settings["data-dir"] = args.data_dir
    out_dir = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    device = "cuda" if torch.cuda.is_available() and settings.get("device", "cuda") == "cuda" else "cpu"
    result = {"benchmark": "training", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "settings": settings, "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
              **versions(), "runs": []}
    for mode in args.modes:
        mode_settings = {**settings, "compile": mode == "compile"}
        summaries = train_rules(mode_settings, tuple(args.rules), out_dir / mode, progress=False)
        print(f"{mode}: " + format_summaries(summaries, mode_settings, device))
        result["runs"] += [{**dataclasses.asdict(summary), "run_dir": str(summary.run_dir), "mode": mode}
                           for summary in summaries]
        if args.json:  # after every mode, so that a failing compiled run keeps the eager numbers
            Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


def compare_with_reference(args) -> None:
    out_dir = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    result = training_reference.compare(args.reference, args.rules, args.epochs or 2, args.rounds, args.device,
                                        args.data_dir, out_dir)
    print(training_reference.format_comparison(result))
    result = {"benchmark": "training-reference", **run_info(torch.device(args.device), None),
              "threads": torch.get_num_threads(), **result}
    print(f"{result['device']}, {result['threads']} threads, torch {result['torch']}, {result['command']}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
