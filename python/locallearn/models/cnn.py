"""Seed 001's CNN (§3.1) as its authors built it for AL, and its backprop baseline.

§3.1: "The first 4 are convolutional layers with a size of 3 × 3 × 32 …, followed by 4
convolutional layers with a size of 3 × 3 × 64 …, followed by a fully connected layer
with 1280 neurons, followed by 4 fully connected layers with 256 neurons …, and ending
with a fully connected layer with 10 neurons." The paper states neither padding nor
downsampling; the authors' public TensorFlow code (SamYWK/Associated_Learning,
MNIST/models.py, CNN and CNN_AL) uses 'same' padding (1) everywhere and stride 2 in the
4th and 8th convolutions (no pooling), so a 28×28 input leaves 64×7×7 = 3136 features.

In that code the 14 layers are the backprop network (``CNN``); under AL (``CNN_AL``) the
forward functions are the 8 convolutions alone, 4 components of 2, each with a two-layer
sigmoid bridge from its flattened map to 1280 then 256 units (a 256-wide target), and
the fully-connected layers are AL's effective path: the last bridge (1280, 256) and the
decoders h₄, h₃, h₂ (256) and h₁ (10) (seed 001 eq. (7)). So:

- ``cnn-seed001`` is the 8 convolutions (ELU under AL; the rule groups them 2 per component,
  ``al_blocks_per_component = 2``, with ``al_bridge_depth = 2``, ``al_bridge_width = 1280``);
- ``cnn-seed001-matched`` is §3.1's 14-layer CNN, the backprop baseline (§3: "identical
  parameters"): exactly AL's effective parameters, 4,700,586 on 1×28×28 and 10 classes.

The widths are fixed (``width_multiplier`` is ignored, as mlp-seed001 ignores depth and
width), so that the baseline stays matched.
"""

from __future__ import annotations

from locallearn.models.network import BlockSpec, Network

# (channels, stride) of the eight 3×3 convolutions.
SEED001_CNN_CONVS = ((32, 1), (32, 1), (32, 1), (32, 2), (64, 1), (64, 1), (64, 1), (64, 2))

SEED001_CNN_FC = {
    "cnn-seed001": (),
    # §3.1: fc1280, then 4 × fc256 (the output layer of 10 is the Network's own).
    "cnn-seed001-matched": (1280, 256, 256, 256, 256),
}


def seed001_cnn(name: str, input_shape: tuple[int, ...], num_classes: int, *, activation: str = "relu",
                dropout: float = 0.0, batch_norm: bool = True) -> Network:
    """cnn-seed001 or cnn-seed001-matched (see the module docstring)."""
    if name not in SEED001_CNN_FC:
        raise ValueError(f"unknown seed 001 CNN {name!r}; choose one of {', '.join(SEED001_CNN_FC)}")
    specs = [BlockSpec(channels, kind="conv", kernel_size=3, stride=stride) for channels, stride in SEED001_CNN_CONVS]
    specs += [BlockSpec(width, kind="linear") for width in SEED001_CNN_FC[name]]
    return Network(name, input_shape, num_classes, specs, activation=activation, dropout=dropout,
                   batch_norm=batch_norm)
