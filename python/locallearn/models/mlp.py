"""Fully-connected networks: depth × width hidden layers (seed 004 §4: 3×1024;
seed 002 and 003: 3/5/8 × 256 tanh), and seed 003's autoencoder."""

from __future__ import annotations

import math

from locallearn.models.network import BlockSpec, Network
from locallearn.models.tasks import Reconstruction

AUTOENCODER_WIDTHS = (512, 64, 512)
"""Seed 003 §5.5: 28×28 − 512 − 64 − 512 − 28×28."""


def mlp(input_shape: tuple[int, ...], num_classes: int, *, depth: int = 3, width: int = 1024,
        activation: str = "relu", dropout: float = 0.0, batch_norm: bool = True) -> Network:
    """An MLP of ``depth`` hidden blocks linear → batch norm → nonlinearity → dropout."""
    if depth < 1 or width < 1:
        raise ValueError(f"mlp needs depth ≥ 1 and width ≥ 1, got depth={depth}, width={width}")
    specs = [BlockSpec(width, kind="linear") for _ in range(depth)]
    return Network(f"mlp-{depth}x{width}", input_shape, num_classes, specs, activation=activation,
                   dropout=dropout, batch_norm=batch_norm)


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
