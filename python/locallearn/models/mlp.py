"""Fully-connected networks: depth × width hidden layers (seed 004 §4: 3×1024;
seed 002 and 003: 3/5/8 × 256 tanh), seed 001's MLP for AL and its backprop baseline
(AL's effective path), and seed 003's autoencoder."""

from __future__ import annotations

import math

from locallearn.models.network import BlockSpec, Network
from locallearn.models.tasks import Reconstruction

AUTOENCODER_WIDTHS = (512, 64, 512)
"""Seed 003 §5.5: 28×28 − 512 − 64 − 512 − 28×28."""

SEED001_WIDTHS = {
    # Seed 001's MLP as its authors built it for AL (SamYWK/Associated_Learning, MNIST/models.py,
    # MLP_AL): two components, each one layer of 1024 ELU units (f₁, f₂), whose two-layer
    # sigmoid bridges (5120 then 1024) and targets live in the rule (al-bridge-depth = 2,
    # al-bridge-width = 5120).
    "mlp-seed001": (1024, 1024),
    # Seed 001 §3.1's "1024, 1024, 5120, 1024, 1024, and 10", the backprop baseline (the
    # authors' MLP): AL's effective path f₁, f₂, b₂ (5120, 1024), h₂ (1024), h₁ (10), so it has
    # exactly AL's effective parameters (§3: "identical parameters"), 13,405,194 on 28×28 inputs.
    "mlp-seed001-matched": (1024, 1024, 5120, 1024, 1024),
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
