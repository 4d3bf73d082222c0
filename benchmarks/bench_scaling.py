"""Data-parallel scaling: training images/s of one recipe on 1, 2, … processes (torchrun;
gloo on CPUs, NCCL on GPUs), each count a ``locallearn train`` run of its own with the same
per-process batch, plus the test error each reaches, side by side. Rates and waits are
medians over the epochs after the first (the warm-up), so give it ``--epochs`` 3 or more.

On a CPU, processes × threads per process is kept at the cores given (``--cores``), so
that 2 processes of 1 thread are compared with 1 process of 2 threads on 2 cores:

    python benchmarks/bench_scaling.py --config configs/demo.toml --rule predsim --processes 1 2 \\
        --cores 2 --epochs 6 --late --json bench_scaling.json

``--late`` adds, for every multi-process count, a run whose all-reduces start only at their
optimiser's step; the seconds the steps wait for communication (rank 0's), beside the default
(started as soon as an optimiser's last gradient is in), say how much of it the overlap hides.

On a machine with several GPUs, ``--device cuda --processes 1 2 4 8`` gives one GPU per process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from common import device_name, versions

from locallearn import config
from locallearn.engine.metrics import read_metrics


LATE_START = """import sys
from locallearn.cli import main
from locallearn.engine.distributed import GradientAveraging
GradientAveraging.start_early = False
sys.exit(main())
"""
"""``locallearn`` with every all-reduce started at its optimiser step, none overlapped."""


def run(settings: dict, processes: int, threads: int, run_dir: Path, late: bool = False) -> dict:
    """Train ``settings`` on ``processes`` processes of ``threads`` threads (``late``: no
    communication started before its step); its epoch records."""
    recipe = run_dir.with_suffix(".toml")
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(config.dump_toml(settings), encoding="utf-8")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    if late:
        script = run_dir.with_suffix(".py")
        script.write_text(LATE_START, encoding="utf-8")
        program = [str(script)]
    else:
        program = ["-m", "locallearn"]
    command = [*launcher, *program, "train", "--config", str(recipe), "--run-dir", str(run_dir), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise SystemExit(f"bench_scaling: {processes} process(es) failed:\n{result.stderr[-3000:]}")
    return [record for record in read_metrics(run_dir) if record["kind"] == "epoch"]


def summary(epochs: list[dict]) -> dict:
    """Medians over the epochs after the first (the warm-up; the only one if there is one) of the
    rates and waits, and the last epoch's test error."""
    timed = epochs[1:] or epochs
    median = lambda key: statistics.median(record.get(key, 0.0) for record in timed)  # noqa: E731
    return {"images_per_s": median("images_per_s"), "train_seconds": median("train_seconds"),
            "allreduce_wait_seconds": median("allreduce_wait_seconds"),
            "allreduce_started_early": median("allreduce_started_early"),
            "timed_epochs": len(timed), "test_error": epochs[-1]["test_error"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="TOML of train settings")
    parser.add_argument("--rule", help="override the config's rule")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads in all, split among processes")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--device", help="override the config's device (cpu or cuda)")
    parser.add_argument("--out", default="runs/bench-scaling", help="directory for the runs")
    parser.add_argument("--late", action="store_true", help="also run every multi-process count with each "
                        "all-reduce started at its optimiser step, to measure what starting it early hides")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    settings = config.load_toml(args.config)
    settings.update({key: value for key, value in (("rule", args.rule), ("epochs", args.epochs),
                                                   ("device", args.device)) if value is not None})
    out_dir = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rows = []
    for processes in args.processes:
        threads = max(1, args.cores // processes)
        for late in (False, True) if args.late and processes > 1 else (False,):
            name = f"{processes}-processes" + ("-late" if late else "")
            epochs = run(settings, processes, threads, out_dir / name, late)
            rows.append({"processes": processes, "threads_per_process": threads,
                         "communication": "late" if late else "early", **summary(epochs)})
    base = rows[0]["images_per_s"]
    print(f"{'processes':>9} {'threads':>7} {'all-reduce':>10} {'images/s':>9} {'speed-up':>8} {'waited s':>8} "
          f"{'early':>6} {'test error':>10}")
    for row in rows:
        print(f"{row['processes']:>9} {row['threads_per_process']:>7} {row['communication']:>10} "
              f"{row['images_per_s']:>9.0f} {row['images_per_s'] / base:>8.2f} {row['allreduce_wait_seconds']:>8.2f} "
              f"{row['allreduce_started_early']:>6.0%} {row['test_error']:>10.4f}")
    if args.json:
        device = settings.get("device", "cuda" if torch.cuda.is_available() else "cpu")
        result = {"benchmark": "scaling", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "settings": settings, "cores": args.cores,
                  "device": device_name(torch.device(device)),
                  **versions(), "runs": rows}
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
