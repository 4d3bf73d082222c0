"""Trains several rules one after another in every rank of a torchrun launch, so that
tests/test_distributed.py pays torchrun's start-up once for all of them:

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT RULE [RULE ...]

Each rule's run goes to OUT/RULE (rank 0 writes it); :func:`settings_for` is shared with the
test, which trains the same settings in one process to compare."""

from __future__ import annotations

import sys
from pathlib import Path

from locallearn.engine import distributed
from locallearn.engine.run import TrainSettings, start_run

RANK_BATCH = 16
OPTIONS = {"dtp": {"inverse_noise": 0.0}}
"""DTP's inverse noise is drawn per rank: the comparison with one process is made without it."""


def settings_for(rule: str, run_dir: Path, batch_size: int) -> TrainSettings:
    """A small deterministic run on digits: no dropout, batch norm or augmentation, plain SGD."""
    return TrainSettings(rule=rule, data="digits", model="mlp", depth=2, width=48, epochs=2, batch_size=batch_size,
                         optimizer="sgd", lr=0.05, lr_milestones=(), batch_norm=False, dropout=0.0, augment=False,
                         device="cpu", log_every=10, seed=5, run_dir=str(run_dir), **OPTIONS.get(rule, {}))


def main(out: Path, rules: list[str]) -> None:
    world = distributed.world_from_environment()
    for rule in rules:
        start_run(settings_for(rule, out / rule, RANK_BATCH), progress=False, world=world).fit()
    distributed.leave()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
