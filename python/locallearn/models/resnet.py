"""The CIFAR-10 ResNets of He et al. 2016, "Deep Residual Learning for Image
Recognition", §4.2, as trained by seed 001 §3 (ResNet-20 and ResNet-32).

§4.2: "The first layer is 3×3 convolutions. Then we use a stack of 6n layers with 3×3
convolutions on the feature maps of sizes {32, 16, 8} respectively, with 2n layers for
each feature map size. The numbers of filters are {16, 32, 64} respectively. The
subsampling is performed by convolutions with a stride of 2. The network ends with a
global average pooling, a 10-way fully-connected layer, and softmax. There are totally
6n+2 stacked weighted layers. … we use identity shortcuts in all cases (i.e., option
A)". Here: a 3×3 conv block of 16 channels (conv → batch norm → nonlinearity), then
three stages of n basic residual blocks (:class:`~locallearn.models.network.ResidualBlock`)
of 16, 32 and 64 channels, the first block of stages 2 and 3 with stride 2, then global
average pooling and the fully-connected output (``output="pooled_linear"``).
n = 3 gives ResNet-20 (0.27M parameters in He et al.'s Table 6; 269,722 here with 10
classes), n = 5 ResNet-32 (0.46M; 464,154).

The hidden blocks fall into groups: the first conv, then one group per stage
(``Network.block_groups``). Block-wise rules that train groups (Associated Learning)
make one component of each, as seed 001's authors did in their public code
(SamYWK/Associated_Learning, CIFAR10/models.py, ``ResNet_AL``: four components, the
first convolution and then one per stage, each with a two-layer sigmoid bridge from its
flattened map to 1500 then 300 units, a 300-wide target).

``resnet20-matched`` and ``resnet32-matched`` are seed 001 §3's backprop baselines
("we added extra layers to ResNet-20, ResNet-32 and VGG when using backpropagation"):
AL's effective path with those bridges (eq. (7)): the residual blocks, then from the
flattened last stage (as AL's last bridge reads it) fully-connected layers of 1500 and
300 (the last bridge b₄) and 3 × 300 (the decoders h₄, h₃, h₂) and the output (h₁), in
place of the pooled output (see :data:`MATCHED_FC`). The authors' own baseline
(CIFAR10/models.py, ``ResNet``) has the same fully-connected widths after global average
pooling (64 inputs instead of 4096: 6,048,000 weights fewer than AL's last bridge); we keep AL's
input to them (§3: "identical parameters", up to batch norm's second parameter per unit).
"""

from __future__ import annotations

from locallearn.models.network import BlockSpec, Network, scale_width

BLOCKS_PER_STAGE = {"resnet20": 3, "resnet32": 5}
"""n of He et al. §4.2: 6n + 2 weighted layers."""
STAGE_WIDTHS = (16, 32, 64)
STEM_WIDTH = 16

MATCHED_FC: dict[str, tuple[int, ...]] = {
    # AL's last bridge (1500, 300) and decoders h₄, h₃, h₂ (300); h₁ is the output layer. With
    # batch norm (2 parameters per unit instead of a bias) the baselines have 2,700 parameters more
    # than AL's effective ones: 7,141,482 against 7,138,782 (resnet20) on 3×32×32 and 10 classes.
    "resnet20-matched": (1500, 300, 300, 300, 300),
    "resnet32-matched": (1500, 300, 300, 300, 300),
}
"""Hidden fully-connected widths of the matched backprop baselines."""


def resnet_specs(blocks_per_stage: int, width_multiplier: float = 1.0) -> tuple[list[BlockSpec], tuple[int, ...]]:
    """(hidden blocks, group sizes) of a CIFAR ResNet with ``blocks_per_stage`` = n."""
    if blocks_per_stage < 1:
        raise ValueError(f"a ResNet needs at least one residual block per stage, got {blocks_per_stage}")
    specs = [BlockSpec(scale_width(STEM_WIDTH, width_multiplier), kind="conv")]
    for stage, width in enumerate(STAGE_WIDTHS):
        for index in range(blocks_per_stage):
            stride = 2 if stage > 0 and index == 0 else 1
            specs.append(BlockSpec(scale_width(width, width_multiplier), kind="residual", stride=stride))
    return specs, (1, *(blocks_per_stage,) * len(STAGE_WIDTHS))


def resnet(name: str, input_shape: tuple[int, ...], num_classes: int, *, width_multiplier: float = 1.0,
           activation: str = "relu", dropout: float = 0.0, batch_norm: bool = True) -> Network:
    """ResNet-20 or ResNet-32 (``resnet20``, ``resnet32``), or their matched baselines
    (``-matched``); ``width_multiplier`` scales every convolution's channels."""
    base = name.removesuffix("-matched")
    if base not in BLOCKS_PER_STAGE or (name != base and name not in MATCHED_FC):
        raise ValueError(f"unknown ResNet {name!r}; choose one of {', '.join(RESNET_NAMES)}")
    specs, groups = resnet_specs(BLOCKS_PER_STAGE[base], width_multiplier)
    output = "pooled_linear"
    if name != base:
        specs += [BlockSpec(width, kind="linear") for width in MATCHED_FC[name]]
        groups, output = (*groups, *(1,) * len(MATCHED_FC[name])), "linear"
    return Network(name, input_shape, num_classes, specs, activation=activation, dropout=dropout,
                   batch_norm=batch_norm, output=output, groups=groups)


RESNET_NAMES = (*BLOCKS_PER_STAGE, *MATCHED_FC)
