"""Layer-parallel training against one worker: training images/s and test error of one
recipe trained by 1 process and by K stages (``--layer-parallel K`` under torchrun), each
a ``locallearn train`` run of its own, side by side. Rates are medians over the epochs after
the first (the warm-up), so give it ``--epochs`` 3 or more.

On a CPU each worker stands for a GPU: every process gets ``--cores`` / K threads, so K
stages on K cores are set against one process on 1 core (the analogue of K GPUs against 1);
the one process on all the cores is reported too.

    python benchmarks/bench_layer_parallel.py --config configs/demo.toml --rule predsim \\
        --train-subset 60000 --epochs 3 --stages 2 --cores 2 --json bench_layer_parallel.json

Besides the runs it reports the split: each block's measured local step (rank 0's timing,
``locallearn.engine.pipeline.measure_unit_seconds``, here in this process on 1 thread), each
stage's share, and the speed-up the slowest stage allows (total / slowest), with the bytes
each batch sends forward.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch
from bench_scaling import run, summary
from common import device_name, versions

from locallearn import config
from locallearn.engine import pipeline
from locallearn.engine.run import TrainSettings, build_parts


def split_report(settings: dict, stages: int) -> dict:
    """The split rank 0 would make, from unit step times measured here on one thread, and
    the bytes each stage boundary sends forward per batch."""
    values = {key.replace("-", "_"): value for key, value in settings.items()}
    parts = build_parts(TrainSettings(**values).resolved())
    torch.set_num_threads(1)
    x, y = next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(0))))
    seconds = pipeline.measure_unit_seconds(parts.rule, x, y)
    ranges = pipeline.split_evenly(seconds, stages)
    stage_seconds = [sum(seconds[index] for index in blocks) for blocks in ranges]
    sent, inputs, rule = [], (x,), parts.rule
    for index in range(len(rule.stage_units()) - 1):  # one more step of each unit, to see what it sends
        inputs, _ = rule.train_stage(inputs, y, range(index, index + 1), {})
        if any(index == units.stop - 1 for units in ranges[:-1]):
            sent.append(sum(tensor.numel() * tensor.element_size() for tensor in inputs)
                        + (len(y) + 2 * len(rule.stage_metric_names())) * 8)
    return {"block_ms": [1e3 * value for value in seconds],
            "stages": [[blocks.start, blocks.stop - 1] for blocks in ranges],
            "stage_ms": [1e3 * value for value in stage_seconds],
            "speedup_bound": sum(stage_seconds) / max(stage_seconds), "bytes_sent_per_batch": sent}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="TOML of train settings")
    parser.add_argument("--rule", help="override the config's rule")
    parser.add_argument("--model", help="override the config's model")
    parser.add_argument("--train-subset", type=int, help="override the config's training subset")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--stages", type=int, default=2, help="K")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads in all")
    parser.add_argument("--out", default="runs/bench-layer-parallel", help="directory for the runs")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    settings = config.load_toml(args.config)
    overrides = (("rule", args.rule), ("model", args.model), ("train-subset", args.train_subset),
                 ("epochs", args.epochs))
    settings.update({key: value for key, value in overrides if value is not None})
    settings.setdefault("device", "cpu")
    out_dir = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    per_stage = max(1, args.cores // args.stages)
    cases = [("1 worker", 1, per_stage, {}), ("1 process, all cores", 1, args.cores, {}),
             (f"{args.stages} stages", args.stages, per_stage, {"layer-parallel": args.stages})]
    rows = []
    for name, processes, threads, extra in cases:
        epochs = run({**settings, **extra}, processes, threads, out_dir / name.replace(" ", "-").replace(",", ""))
        rows.append({"case": name, "processes": processes, "threads_per_process": threads, **summary(epochs)})
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = row["images_per_s"] / base
    split = split_report(settings, args.stages)

    print(f"{settings['model']}, {settings['rule']}, {settings.get('epochs')} epochs, batch {settings.get('batch-size')}")
    print(f"{'case':<22}{'processes':>10}{'threads':>8}{'images/s':>10}{'× 1 worker':>11}{'test error':>11}")
    for row in rows:
        print(f"{row['case']:<22}{row['processes']:>10}{row['threads_per_process']:>8}{row['images_per_s']:>10.0f}"
              f"{row['speedup']:>11.2f}{row['test_error']:>11.4f}")
    print(f"split {split['stages']}: stage ms {[round(value, 1) for value in split['stage_ms']]}, "
          f"bound {split['speedup_bound']:.2f}×, bytes sent per batch {split['bytes_sent_per_batch']}")
    if args.json:
        result = {"benchmark": "layer_parallel", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "settings": settings, "cores": args.cores, "stages": args.stages,
                  "device": device_name(torch.device(settings["device"])), **versions(), "runs": rows, "split": split}
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
