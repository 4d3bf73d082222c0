"""Runs anokland/local-loss's train.py (a checkout the user provides; nothing of it is
copied here) unchanged, and times its training loop from outside.

    python benchmarks/reference_local_loss.py PATH/TO/train.py -- --dataset FashionMNIST ...

train.py times nothing itself. With ``--progress-bar`` its ``train()`` opens a ``tqdm`` bar
before its first batch and closes it after its last; this runner puts a ``tqdm`` of its own
in ``sys.modules`` first, which records those two moments, so each epoch's training time
excludes model building, data preparation and the test pass, as locallearn's
``train_seconds`` does. After every epoch it prints one line ``REFERENCE_EPOCH {json}`` with
the seconds; train.py's own output (the train and test errors) passes through.
"""

from __future__ import annotations

import importlib.machinery
import json
import runpy
import sys
import time
import types

import torch


class EpochTimer:
    """The part of tqdm's interface train.py uses, timing the bar's life."""

    def __init__(self, total: int | None = None, **_) -> None:
        self.total = total
        self.started = time.perf_counter()

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.started
        print("REFERENCE_EPOCH " + json.dumps({"train_seconds": seconds, "batches": self.total}), flush=True)


def main() -> None:
    if len(sys.argv) < 2 or "--" not in sys.argv:
        raise SystemExit("usage: reference_local_loss.py PATH/TO/train.py -- TRAIN_PY_ARGUMENTS")
    script = sys.argv[1]
    arguments = sys.argv[sys.argv.index("--") + 1:]
    if "--progress-bar" not in arguments:
        arguments.append("--progress-bar")
    timer_module = types.ModuleType("tqdm")
    timer_module.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
    timer_module.tqdm = EpochTimer
    sys.modules["tqdm"] = timer_module
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
