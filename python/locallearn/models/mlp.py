"""Fully-connected networks: depth × width hidden layers (seed 004 §4: 3×1024;
seed 002 and 003: 3/5/8 × 256 tanh), seed 001's MLP and its parameter-matched
backprop baseline, and seed 003's autoencoder."""

from __future__ import annotations

import math

from locallearn.models.network import BlockSpec, Network
from locallearn.models.tasks import Reconstruction

AUTOENCODER_WIDTHS = (512, 64, 512)
"""Seed 003 §5.5: 28×28 − 512 − 64 − 512 − 28×28."""

SEED001_WIDTHS = {
    # Seed 001 §3.1: the 6-layer MLP's hidden layers (the sixth is the 10 classes).
    "mlp-seed001": (1024, 1024, 5120, 1024, 1024),
    # §3: the backprop baseline gets more layers until it has as many parameters as AL's
    # effective ones on 28×28 inputs and 10 classes (27,045,898 with one-layer bridges):
    # 12 more of 1024 and one of 1020 give 27,045,854
    # (locallearn.rules.associated.matched_backprop_widths; a test keeps them equal).
    "mlp-seed001-matched": (1024, 1024, 5120, 1024, 1024) + (1024,) * 12 + (1020,),
}


def mlp(input_shape: tuple[int, ...], num_classes: int, *, depth: int = 3, width: int = 1024,
        widths: tuple[int, ...] | None = None, activation: str = "relu", dropout: float = 0.0,
        batch_norm: bool = True) -> Network:
    """An MLP of hidden blocks linear → batch norm → nonlinearity → dropout: ``depth`` of
    ``width`` units, or one per entry of ``widths`` when given."""
    if widths is None:
        if depth < 1 or width < 1:
            raise ValueError(f"mlp needs depth ≥ 1 and width ≥ 1, got depth={depth}, width={width}")
        widths, name = (width,) * depth, f"mlp-{depth}x{width}"
    else:
        if not widths or min(widths) < 1:
            raise ValueError(f"mlp needs at least one hidden width, all ≥ 1, got {widths}")
        name = f"mlp-{'-'.join(map(str, widths))}"
    specs = [BlockSpec(size, kind="linear") for size in widths]
    return Network(name, input_shape, num_classes, specs, activation=activation, dropout=dropout,
                   batch_norm=batch_norm)


def autoencoder(input_shape: tuple[int, ...], *, widths: tuple[int, ...] = AUTOENCODER_WIDTHS,
                activation: str = "tanh", dropout: float = 0.0, batch_norm: bool = False) -> Network:
    """The fully-connected autoencoder of seed 003 §5.5: hidden layers of ``widths`` and a
    linear output the size of the input, trained to reconstruct it (squared L2 error)."""
    if not widths or min(widths) < 1:
        raise ValueError(f"autoencoder needs at least one hidden width, all ≥ 1, got {widths}")
    specs = [BlockSpec(width, kind="linear") for width in widths]
    size = math.prod(input_shape)
    return Network(f"autoencoder-{'-'.join(map(str, widths))}", input_shape, size, specs, activation=activation,
                   dropout=dropout, batch_norm=batch_norm, task=Reconstruction())
