"""Learned layer inverses for target propagation and the fixed random auxiliary
output of AO-SDTP (seed 003 §2.1.2).

An inverse is parametrised like the layer it inverts: a fully-connected layer's by a
fully-connected map, a locally-connected layer's by the transpose of a
locally-connected map with its own weights (seed 003 §5.4: V has the sparsity of Wᵀ,
computed as the gradient of a dummy forward map). A convolution shares its weights
across locations and has no inverse here.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from locallearn.models import Network
from locallearn.models.network import LinearOutput, activation_name
from locallearn.nn import LocallyConnected2d, LocallyConnectedTranspose2d
from locallearn.ops import DIFFERENCE_TARGET_ACTIVATIONS, difference_target


class LayerInverse(nn.Module):
    """g(h) = σ(V h + c), the approximate inverse of a layer (seed 003 §2.1.2: "parametrized
    similarly to the forward computation"), σ the network's nonlinearity, its output
    shaped like the inverted layer's input. V is Glorot uniform and c zero, as every layer
    in seed 003 §3; build one with :meth:`of_linear` or :meth:`of_locally_connected`.

    ``fused_activation`` is σ's name where :meth:`difference_target` can run as one op (a
    fully-connected inverse with bias and an elementwise σ of the network's), else None."""

    def __init__(self, layer: nn.Module, output_shape: tuple[int, ...], activation: nn.Module) -> None:
        super().__init__()
        self.layer, self.output_shape = layer, tuple(output_shape)
        self.activation = copy.deepcopy(activation)
        name = activation_name(activation)
        fusable = isinstance(layer, nn.Linear) and layer.bias is not None and name in DIFFERENCE_TARGET_ACTIVATIONS
        self.fused_activation = name if fusable else None

    @classmethod
    def of_linear(cls, in_features: int, output_shape: tuple[int, ...], activation: nn.Module,
                  generator: torch.Generator) -> LayerInverse:
        """The inverse of a fully-connected layer of ``in_features`` outputs whose input
        has ``output_shape`` (flattened by the layer)."""
        layer = nn.Linear(in_features, math.prod(output_shape))
        with torch.no_grad():
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)
        return cls(layer, output_shape, activation)

    @classmethod
    def of_locally_connected(cls, forward: LocallyConnected2d, activation: nn.Module,
                             generator: torch.Generator) -> LayerInverse:
        """The inverse of a locally-connected layer: its transpose map with its own weight."""
        layer = LocallyConnectedTranspose2d.mirroring(forward)
        with torch.no_grad():
            layer.weight.uniform_(-layer.glorot_bound, layer.glorot_bound, generator=generator)
        return cls(layer, (forward.in_channels, *forward.input_size), activation)

    def forward(self, h: Tensor) -> Tensor:
        return self.activation(self.layer(h).reshape(-1, *self.output_shape))

    def difference_target(self, h_below: Tensor, t_upper: Tensor, h_upper: Tensor) -> Tensor:
        """h_below + g(t_upper) − g(h_upper), DTP's target for the inverted layer's input
        (seed 003 eq. (2)), by the fused op :func:`~locallearn.ops.difference_target` in
        h_below's dtype (the other inputs and the parameters cast to it). Needs
        ``fused_activation``."""
        dtype = h_below.dtype
        target = difference_target(h_below.flatten(1), t_upper.to(dtype), h_upper.to(dtype),
                                   self.layer.weight.to(dtype), self.layer.bias.to(dtype), self.fused_activation)
        return target.view(h_below.shape)


class RandomFeatures(nn.Module):
    """AO-SDTP's auxiliary output z = σ(A h + a) of the (flattened) penultimate layer: A Glorot uniform,
    a zero, both fixed buffers ("we simply do not optimize the forward weights for z",
    seed 003 §2.1.2). The paper does not name z's nonlinearity; σ is the network's."""

    def __init__(self, in_features: int, out_features: int, activation: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        weight = torch.empty(out_features, in_features)
        nn.init.xavier_uniform_(weight, generator=generator)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros(out_features))
        self.activation = copy.deepcopy(activation)

    def forward(self, h: Tensor) -> Tensor:
        return self.activation(nn.functional.linear(h.flatten(1), self.weight, self.bias))


def check_invertible(model: Network, rule: str) -> None:
    """Refuse networks whose layers have no inverse here: conv or residual blocks, pooling,
    batch norm, a conv output."""
    if not model.blocks:
        raise ValueError(f"rule {rule!r} trains hidden layers from targets and {model.name} has none")
    for index, block in enumerate(model.blocks):
        if block.kind == "conv":
            raise ValueError(
                f"rule {rule!r} needs layer inverses, which exist for fully-connected and locally-connected "
                f"layers (seed 003 §5.4); block {index} of {model.name} is a convolution, whose shared weights "
                f"have none: use an mlp or a locally-connected model (lc-mnist, lc-cifar, lc-imagenet)")
        if block.kind == "residual":
            raise ValueError(
                f"rule {rule!r} needs layer inverses and block {index} of {model.name} is a residual block "
                f"(two convolutions and a shortcut), which has none here: use an mlp or a locally-connected "
                f"model (lc-mnist, lc-cifar, lc-imagenet)")
        if not isinstance(block.norm, nn.Identity):
            raise ValueError(
                f"rule {rule!r} needs a per-example inverse of every layer and block {index} of {model.name} "
                f"has batch norm, which mixes the examples of a batch: build the model with batch_norm=False")
        if not isinstance(block.pool, nn.Identity):
            raise ValueError(f"rule {rule!r} needs an inverse of every layer and block {index} of {model.name} "
                             f"max-pools (seed 003 §5.2 replaces pooling by strided layers)")
    if not isinstance(model.output, LinearOutput):
        raise ValueError(f"rule {rule!r} needs a fully-connected output layer, {model.name} has "
                         f"{type(model.output).__name__}")
