"""Seed 001's 14-layer CNN (§3.1) and its parameter-matched backprop baseline.

§3.1: "The first 4 are convolutional layers with a size of 3 × 3 × 32 …, followed by 4
convolutional layers with a size of 3 × 3 × 64 …, followed by a fully connected layer
with 1280 neurons, followed by 4 fully connected layers with 256 neurons …, and ending
with a fully connected layer with 10 neurons." The paper states neither padding nor
downsampling; without any, fc1280 after a 64×28×28 map would hold 64M weights. Our
assumption, which the authors' public TensorFlow code (SamYWK/Associated_Learning,
MNIST/models.py) also follows: 'same' padding (1) everywhere, and the 4th and 8th
convolutions have stride 2 (no pooling), so a 28×28 input leaves 64×7×7 = 3136 features
for fc1280. The widths are fixed (``width_multiplier`` is ignored, as mlp-seed001
ignores depth and width), so that the matched model stays matched.

``cnn-seed001-matched`` is the backprop baseline of §3 ("we increased the number of
layers in the corresponding baseline models when training by backpropagation"): more
fc256 layers, the last one sized to close the gap, until its parameter count equals AL's
effective count on cnn-seed001 for 1×28×28 inputs and 10 classes
(:func:`locallearn.rules.associated.seed001_cnn_parameter_counts`; a test keeps the
widths below equal to what it computes).
"""

from __future__ import annotations

from locallearn.models.network import BlockSpec, Network

# (channels, stride) of the eight 3×3 convolutions.
SEED001_CNN_CONVS = ((32, 1), (32, 1), (32, 1), (32, 2), (64, 1), (64, 1), (64, 1), (64, 2))

SEED001_CNN_FC = {
    # §3.1: fc1280, then 4 × fc256 (the output layer of 10 is the Network's own).
    "cnn-seed001": (1280, 256, 256, 256, 256),
    # §3: AL's effective parameters on cnn-seed001 (1×28×28, 10 classes, one-layer bridges,
    # 256-wide conv targets) number 6,081,194; cnn-seed001 has 4,700,586, and 20 more fc256
    # and one fc252 give 6,081,150 (locallearn.rules.associated.seed001_cnn_parameter_counts).
    "cnn-seed001-matched": (1280, 256, 256, 256, 256) + (256,) * 20 + (252,),
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
