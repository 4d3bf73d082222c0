"""Architectures as lists of hidden blocks plus an output layer (:class:`Network`).

``build_model(name, input_shape, num_classes, ...)`` builds any of ``MODEL_NAMES``
for any input shape and class count.
"""

from __future__ import annotations

from locallearn.models.allcnn import allcnn
from locallearn.models.cnn import SEED001_CNN_FC, seed001_cnn
from locallearn.models.init import INIT_SCHEMES, initialize
from locallearn.models.lc import LAYOUTS as TABLE3_LAYOUTS, table3_network
from locallearn.models.mlp import SEED001_WIDTHS, autoencoder, mlp
from locallearn.models.network import ACTIVATIONS, BlockSpec, HiddenBlock, Network, ResidualBlock
from locallearn.models.resnet import RESNET_NAMES, resnet
from locallearn.models.tasks import Classification, Reconstruction, Task
from locallearn.models.vgg import vgg

MODEL_NAMES = ("mlp", *SEED001_WIDTHS, *SEED001_CNN_FC, "vgg8b", "vgg11b", "allcnn-c", "allcnn-c-short",
               "autoencoder", *TABLE3_LAYOUTS, *RESNET_NAMES)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, depth: int = 3, width: int = 1024,
                width_multiplier: float = 1.0, activation: str = "relu", dropout: float = 0.0,
                batch_norm: bool = True) -> Network:
    """One of ``MODEL_NAMES``; ``depth``/``width`` apply to the MLP (mlp-seed001* and cnn-seed001*
    have seed 001's fixed widths), ``width_multiplier`` to the other conv nets (the
    CIFAR ResNets resnet20/resnet32 of He et al. 2016 §4.2 included) and the
    locally-connected layers of seed 003 Table 3 (lc-*; fc-* are that table's MLPs).
    The autoencoder (seed 003 §5.5) reconstructs its input and ignores ``num_classes``."""
    common = dict(activation=activation, dropout=dropout, batch_norm=batch_norm)
    if name == "mlp":
        return mlp(input_shape, num_classes, depth=depth, width=width, **common)
    if name in ("vgg8b", "vgg11b"):
        return vgg(name, input_shape, num_classes, width_multiplier=width_multiplier, **common)
    if name in ("allcnn-c", "allcnn-c-short"):
        return allcnn(name, input_shape, num_classes, width_multiplier=width_multiplier, **common)
    if name in SEED001_WIDTHS:
        return mlp(input_shape, num_classes, widths=SEED001_WIDTHS[name], **common)
    if name in SEED001_CNN_FC:
        return seed001_cnn(name, input_shape, num_classes, **common)
    if name in RESNET_NAMES:
        return resnet(name, input_shape, num_classes, width_multiplier=width_multiplier, **common)
    if name == "autoencoder":
        return autoencoder(input_shape, **common)
    if name in TABLE3_LAYOUTS:
        return table3_network(name, input_shape, num_classes, width_multiplier=width_multiplier, **common)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


__all__ = ["ACTIVATIONS", "INIT_SCHEMES", "MODEL_NAMES", "BlockSpec", "Classification", "HiddenBlock", "Network",
           "Reconstruction", "ResidualBlock", "Task", "build_model", "initialize"]
