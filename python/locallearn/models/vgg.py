"""VGG8B and VGG11B of seed 004 §4: 3×3 convolutions (stride 1, padding 1), 2×2 max
pooling, one hidden fully-connected layer of 1024 and the output layer. The width
multiplier scales every convolution (the paper's (2x) and (3x) variants).

§4 applies dropout "after each non-linearity" without saying which kind; the authors'
code (anokland/local-loss, train.py at 7b3b40b) drops whole channels in its conv blocks
(``LocalLossBlockConv``, l. 723: ``nn.Dropout2d``) and single values in its linear ones
(``LocalLossBlockLinear``, l. 513: ``nn.Dropout``), so the conv blocks here use channel
dropout and the fc1024 block element dropout."""

from __future__ import annotations

from locallearn.models.network import BlockSpec, Network, scale_width

POOL = "pool"
LAYOUTS = {
    # conv128-conv256-pool-conv256-conv512-pool-conv512-pool-conv512-pool-fc1024-fc
    "vgg8b": [128, 256, POOL, 256, 512, POOL, 512, POOL, 512, POOL],
    # conv128-conv128-conv128-conv256-pool-conv256-conv512-pool-conv512-conv512-pool-conv512-pool-fc1024-fc
    "vgg11b": [128, 128, 128, 256, POOL, 256, 512, POOL, 512, 512, POOL, 512, POOL],
}
HIDDEN_FC = 1024


def vgg(name: str, input_shape: tuple[int, ...], num_classes: int, *, width_multiplier: float = 1.0,
        activation: str = "relu", dropout: float = 0.0, batch_norm: bool = True) -> Network:
    """VGG8B or VGG11B; each 'pool' closes the preceding conv block with 2×2 max pooling."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown VGG {name!r}; choose one of {', '.join(LAYOUTS)}")
    specs: list[BlockSpec] = []
    for entry in LAYOUTS[name]:
        if entry == POOL:
            specs[-1] = BlockSpec(specs[-1].width, max_pool=True, channel_dropout=True)
        else:
            specs.append(BlockSpec(scale_width(entry, width_multiplier), channel_dropout=True))
    specs.append(BlockSpec(HIDDEN_FC, kind="linear"))
    label = name if width_multiplier == 1 else f"{name}({width_multiplier:g}x)"
    return Network(label, input_shape, num_classes, specs, activation=activation, dropout=dropout,
                   batch_norm=batch_norm)
