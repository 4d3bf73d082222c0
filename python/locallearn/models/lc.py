"""The networks of seed 003 Table 3 (§5.2): locally-connected stacks for MNIST, CIFAR
and ImageNet, and the fully-connected networks they are compared with.

A locally-connected layer (kernel, channels, stride) has zero padding (kernel − 1) // 2,
which keeps the size at stride 1, and no pooling follows it (strided layers replace
pooling, §5.2). The width multiplier scales the locally-connected channel counts only,
as §5.4 shrinks the ImageNet network; fully-connected widths are the table's. The
output layer is a linear layer to the classes (the table's softmax, applied by the
loss).
"""

from __future__ import annotations

from locallearn.models.network import BlockSpec, Network, scale_width

LAYOUTS = {
    # name: ([(kernel, channels, stride) of each locally-connected layer], [hidden FC widths])
    "lc-mnist": ([(3, 32, 2), (3, 64, 2)], [1024]),
    "lc-cifar": ([(5, 64, 2), (5, 128, 2), (3, 256, 1)], [1024]),
    "lc-imagenet": ([(9, 48, 4), (3, 48, 2), (5, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 2), (3, 384, 1)], []),
    "fc-mnist": ([], [256] * 5),
    "fc-cifar": ([], [1024] * 3),
}


def table3_network(name: str, input_shape: tuple[int, ...], num_classes: int, *, width_multiplier: float = 1.0,
           activation: str = "relu", dropout: float = 0.0, batch_norm: bool = True) -> Network:
    """One of the Table 3 networks for any input shape and class count."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown seed 003 Table 3 network {name!r}; choose one of {', '.join(LAYOUTS)}")
    local, dense = LAYOUTS[name]
    specs = [BlockSpec(scale_width(channels, width_multiplier), kind="locally_connected", kernel_size=kernel,
                       stride=stride) for kernel, channels, stride in local]
    specs += [BlockSpec(width, kind="linear") for width in dense]
    label = name if width_multiplier == 1 or not local else f"{name}({width_multiplier:g}x)"
    return Network(label, input_shape, num_classes, specs, activation=activation, dropout=dropout,
                   batch_norm=batch_norm)
