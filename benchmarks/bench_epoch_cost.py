"""What one epoch of a recipe costs, before committing hours to it: the median time of a
training step and of an evaluation batch on the recipe's real data, at each depth asked for,
and the epoch time they add up to (every training batch, then the validation and test
batches). Used to plan `locallearn reproduce` tables, e.g. seed 002's Equil-Prop row:

    python benchmarks/bench_epoch_cost.py --config configs/seed002-fashion-mnist-eqprop.toml \\
        --depths 3 5 8 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from common import run_info, timed_runs, write_json

from locallearn import engine
from locallearn.engine.run import build_parts, settings_from_toml


def measure(settings: engine.TrainSettings, warmup: int, repeats: int) -> dict:
    parts = build_parts(settings)
    rule, device = parts.rule, torch.device(settings.device)
    train_batches = [batch for batch, _ in zip(parts.train_loader.epoch(torch.Generator().manual_seed(0)),
                                               range(warmup + repeats))]
    evaluated = [(x,) for x, _ in train_batches]
    step_ms = statistics.median(timed_runs(rule.train_step, train_batches, warmup, repeats, device))
    with torch.no_grad():
        predict_ms = statistics.median(timed_runs(rule.predict, evaluated, warmup, repeats, device))
    evaluation_batches = len(parts.test_loader) + (len(parts.validation_loader) if parts.validation_loader else 0)
    epoch_s = (len(parts.train_loader) * step_ms + evaluation_batches * predict_ms) / 1e3
    return {"depth": settings.depth, "train_step_ms": step_ms, "predict_ms": predict_ms,
            "train_batches": len(parts.train_loader), "evaluation_batches": evaluation_batches,
            "epoch_minutes": epoch_s / 60, "epochs_per_hour": 3600 / epoch_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a recipe (TOML of train settings)")
    parser.add_argument("--depths", type=int, nargs="+", help="hidden layers to measure (default: the recipe's)")
    parser.add_argument("--data-dir", help="where the dataset's files are")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_toml(args.config)
    if args.data_dir:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)
    settings = settings.resolved()
    result = {**run_info(torch.device(settings.device), argv), "config": args.config,
              "threads": torch.get_num_threads(), "batch_size": settings.batch_size, "depths": []}
    for depth in args.depths or [settings.depth]:
        entry = measure(dataclasses.replace(settings, depth=depth), args.warmup, args.repeats)
        result["depths"].append(entry)
        print(f"{args.config}, {depth} hidden layers, batch {settings.batch_size}, {result['threads']} thread(s): "
              f"train step {entry['train_step_ms']:.1f} ms, evaluation batch {entry['predict_ms']:.1f} ms; "
              f"epoch ({entry['train_batches']} + {entry['evaluation_batches']} batches) "
              f"{entry['epoch_minutes']:.1f} min", flush=True)
    print(f"{result['device']}, torch {result['torch']}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
