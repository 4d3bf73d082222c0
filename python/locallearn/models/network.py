"""A network as a list of hidden blocks and an output layer.

Every architecture is expressed this way so that every learning rule can run on
it: backprop composes the blocks, a local rule trains each block from its own
loss (seed 004 §3) and detaches the graph between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.models.tasks import Classification, Task
from locallearn.nn.locally_connected import LocallyConnected2d

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),  # seed 004 §4: slope 0.01 for sim / predsim
    "tanh": nn.Tanh,
    "elu": nn.ELU,  # seed 001 §3: the forward functions of associated learning
}


BLOCK_KINDS = ("conv", "locally_connected", "linear", "residual")
SPATIAL_KINDS = ("conv", "locally_connected")
OUTPUT_KINDS = ("linear", "conv", "pooled_linear")
"""The output layer: flatten → linear (MLP, VGG); 1×1 conv → global average pooling
(AllCNN-C); global average pooling → linear (the CIFAR ResNets of He et al. 2016 §4.2)."""


@dataclass(frozen=True)
class BlockSpec:
    """One hidden block: a conv or locally-connected layer (kernel, stride, zero padding
    (kernel − 1) // 2, which keeps the size at stride 1) or a linear layer, followed by
    batch norm, the nonlinearity, dropout and optionally 2×2 max pooling; or (kind
    "residual") a basic residual block of two such convolutions (:class:`ResidualBlock`).
    ``channel_dropout`` (conv and locally-connected blocks) drops whole feature maps
    (``nn.Dropout2d``) instead of single values."""

    width: int
    kind: str = "conv"  # one of BLOCK_KINDS
    kernel_size: int = 3
    stride: int = 1
    max_pool: bool = False
    channel_dropout: bool = False

    def __post_init__(self) -> None:
        for name in ("width", "kernel_size", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockSpec {name} must be an int >= 1, got {value!r}")


def scale_width(width: int, multiplier: float) -> int:
    """A layer's channel count times the network's width multiplier (at least 1)."""
    if multiplier <= 0:
        raise ValueError(f"width_multiplier must be positive, got {multiplier}")
    return max(1, round(width * multiplier))


def activation_name(module: nn.Module) -> str | None:
    """The name in ACTIVATIONS of the activation that builds a module like ``module``
    (same type and settings), or None."""
    return next((name for name, make in ACTIVATIONS.items() if repr(make()) == repr(module)), None)


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class HiddenBlock(nn.Module):
    """layer → batch norm → nonlinearity → dropout (→ 2×2 max pool), seed 004 §4.

    ``features(x)`` is the representation the local losses read (after the
    nonlinearity, before dropout and pooling); ``emit(h)`` is what the next block
    receives. A linear block flattens its input.
    """

    def __init__(self, in_shape: tuple[int, ...], spec: BlockSpec, activation: str, dropout: float,
                 batch_norm: bool) -> None:
        super().__init__()
        self.kind = spec.kind
        if spec.kind in SPATIAL_KINDS:
            _require_image(spec.kind, in_shape)
            padding = (spec.kernel_size - 1) // 2
            if spec.kind == "conv":
                self.layer = nn.Conv2d(in_shape[0], spec.width, spec.kernel_size, spec.stride, padding,
                                       bias=not batch_norm)
            else:
                self.layer = LocallyConnected2d(in_shape[0], spec.width, in_shape[1:], spec.kernel_size, spec.stride,
                                                padding, bias=not batch_norm)
            self.norm = nn.BatchNorm2d(spec.width) if batch_norm else nn.Identity()
        elif spec.kind == "linear":
            self.layer = nn.Linear(_numel(in_shape), spec.width, bias=not batch_norm)
            self.norm = nn.BatchNorm1d(spec.width) if batch_norm else nn.Identity()
        else:
            raise ValueError(f"block kind must be one of {', '.join(BLOCK_KINDS)}, got {spec.kind!r}")
        self.activation = make_activation(activation)
        if spec.channel_dropout and spec.kind not in SPATIAL_KINDS:
            raise ValueError(f"channel dropout drops feature maps; a {spec.kind} block has none")
        dropout_class = nn.Dropout2d if spec.channel_dropout else nn.Dropout
        self.dropout = dropout_class(dropout) if dropout > 0 else nn.Identity()
        self.pool = nn.MaxPool2d(2) if spec.max_pool else nn.Identity()

    def features(self, x: Tensor) -> Tensor:
        if self.kind == "linear":
            x = x.flatten(1)
        return self.activation(self.norm(self.layer(x)))

    def emit(self, h: Tensor) -> Tensor:
        return self.pool(self.dropout(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.emit(self.features(x))


class ResidualBlock(nn.Module):
    """The basic residual block of He et al. 2016 (§3.2, Fig. 2; §4.2 on CIFAR-10):
    conv (stride s) → batch norm → nonlinearity → conv → batch norm, plus the shortcut,
    then the nonlinearity; dropout (→ 2×2 max pool) follow as in :class:`HiddenBlock`.

    The shortcut is the identity, or where the block changes the shape He et al.'s
    option A (§3.3, used on CIFAR-10 in §4.2): the input subsampled with stride s and
    zero channels appended up to the block's width, so it has no parameters. Both
    convolutions have the spec's (odd) kernel and 'same' padding. Without batch norm
    the convolutions get biases instead.

    Same interface as :class:`HiddenBlock`: ``features(x)`` (after the last
    nonlinearity) and ``emit(h)``; ``norm`` is the second batch norm (the one before
    the block's output nonlinearity), so that rules asking "does this block normalise
    over the batch?" read it as they read a HiddenBlock's.
    """

    kind = "residual"

    def __init__(self, in_shape: tuple[int, ...], spec: BlockSpec, activation: str, dropout: float,
                 batch_norm: bool) -> None:
        super().__init__()
        _require_image(spec.kind, in_shape)
        if spec.kernel_size % 2 == 0:
            raise ValueError(f"a residual block needs an odd kernel ('same' padding), got {spec.kernel_size}")
        channels = in_shape[0]
        if spec.width < channels:
            raise ValueError(f"a residual block's parameter-free shortcut (He et al. option A) pads channels "
                             f"with zeros and cannot drop them: width {spec.width} < {channels} input channels")
        padding = (spec.kernel_size - 1) // 2
        self.conv1 = nn.Conv2d(channels, spec.width, spec.kernel_size, spec.stride, padding, bias=not batch_norm)
        self.norm1 = nn.BatchNorm2d(spec.width) if batch_norm else nn.Identity()
        self.inner_activation = make_activation(activation)
        self.conv2 = nn.Conv2d(spec.width, spec.width, spec.kernel_size, 1, padding, bias=not batch_norm)
        self.norm2 = nn.BatchNorm2d(spec.width) if batch_norm else nn.Identity()
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.pool = nn.MaxPool2d(2) if spec.max_pool else nn.Identity()
        self.stride, self.padded_channels = spec.stride, spec.width - channels

    @property
    def norm(self) -> nn.Module:
        return self.norm2

    def shortcut(self, x: Tensor) -> Tensor:
        """Identity, or option A: subsample by the stride, append zero channels."""
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.padded_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.padded_channels))
        return x

    def features(self, x: Tensor) -> Tensor:
        residual = self.norm2(self.conv2(self.inner_activation(self.norm1(self.conv1(x)))))
        return self.activation(residual + self.shortcut(x))

    def emit(self, h: Tensor) -> Tensor:
        return self.pool(self.dropout(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.emit(self.features(x))


class LinearOutput(nn.Module):
    """The classifier of an MLP or VGG: flatten, then a linear layer to the logits."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(_numel(in_shape), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.flatten(1))


class ConvOutput(nn.Module):
    """AllCNN-C's classifier: a 1×1 convolution to one map per class, then global
    average pooling (seed 000 Table I)."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.layer = nn.Conv2d(in_shape[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x).mean(dim=(2, 3))


class PooledLinearOutput(nn.Module):
    """The classifier of the CIFAR ResNets (He et al. 2016 §4.2): global average pooling
    over the positions, then a linear layer to the logits."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_shape[0], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.mean(dim=(2, 3)))


OUTPUTS = {"linear": LinearOutput, "conv": ConvOutput, "pooled_linear": PooledLinearOutput}


class Network(nn.Module):
    """Hidden blocks in order, then the output layer; ``forward`` gives the output (logits,
    or a reconstruction). ``num_classes`` is the number of output units; ``task`` says
    what they are trained to be (default: classification into ``num_classes`` classes);
    ``output`` is one of :data:`OUTPUT_KINDS` (``conv_output=True`` is the older spelling
    of ``output="conv"``).

    ``groups`` splits the hidden blocks into consecutive groups of the given sizes
    (``block_groups``: the blocks' indices per group); by default every block is its own
    group. A group is a unit a block-wise rule may train as one (a ResNet's stage, for
    Associated Learning); rules that train each block on its own ignore it."""

    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int, specs: list[BlockSpec], *,
                 activation: str, dropout: float, batch_norm: bool, output: str = "linear",
                 conv_output: bool = False, groups: Sequence[int] | None = None,
                 task: Task | None = None) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if conv_output:
            output = "conv"
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")
        self.name, self.input_shape, self.num_classes = name, tuple(input_shape), num_classes
        self.task = Classification(num_classes) if task is None else task
        self.blocks = nn.ModuleList()
        self.block_shapes: list[tuple[int, ...]] = []
        shape = self.input_shape
        for index, spec in enumerate(specs):
            feature_shape, shape_out = _shapes_after(spec, shape)
            if min(feature_shape) < 1 or min(shape_out) < 1:
                raise ValueError(f"{name}: input {self.input_shape} is too small: block {index} "
                                 f"receives {shape} and leaves an empty feature map")
            block = ResidualBlock if spec.kind == "residual" else HiddenBlock
            self.blocks.append(block(shape, spec, activation, dropout, batch_norm))
            self.block_shapes.append(feature_shape)
            shape = shape_out
        if output != "linear" and len(shape) != 3:
            raise ValueError(f"{name}: a {output!r} output needs (C, H, W) features, got {shape}")
        self.output = OUTPUTS[output](shape, num_classes)
        sizes = (1,) * len(self.blocks) if groups is None else tuple(groups)
        if sum(sizes) != len(self.blocks) or min(sizes, default=1) < 1:
            raise ValueError(f"{name}: groups {sizes} must be positive sizes summing to the {len(self.blocks)} "
                             f"hidden blocks")
        starts = [sum(sizes[:index]) for index in range(len(sizes))]
        self.block_groups = tuple(tuple(range(start, start + size)) for start, size in zip(starts, sizes))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name} takes input of shape (B, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        for block in self.blocks:
            x = block(x)
        return self.output(x)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _require_image(kind: str, in_shape: tuple[int, ...]) -> None:
    if len(in_shape) != 3:
        raise ValueError(f"a {kind} block needs (C, H, W) input, got {in_shape}")


def _shapes_after(spec: BlockSpec, in_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(features shape, output shape) of one example through a block."""
    if spec.kind not in BLOCK_KINDS:
        raise ValueError(f"block kind must be one of {', '.join(BLOCK_KINDS)}, got {spec.kind!r}")
    if spec.kind == "linear":
        return (spec.width,), (spec.width,)
    _require_image(spec.kind, in_shape)
    padding = (spec.kernel_size - 1) // 2
    height, width = ((size + 2 * padding - spec.kernel_size) // spec.stride + 1 for size in in_shape[1:])
    features = (spec.width, height, width)
    return features, ((spec.width, height // 2, width // 2) if spec.max_pool else features)
