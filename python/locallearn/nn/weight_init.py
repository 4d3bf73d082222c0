"""Weight initialisation schemes the papers' recipes name (seed 002 §4, seed 003 §5
and Table 4, seed 001 §3), for one weight tensor of one layer: Gaussian with a given
standard deviation, orthogonal, Glorot uniform, He normal, or PyTorch's default. The
same draw serves a layer's weight and a matrix drawn like it (feedback alignment's B:
seed 002 §4 initialises the FA family with the Glorot scheme, seed 003 §5 every layer)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from locallearn.nn.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d

INIT_SCHEMES = ("default", "gaussian", "orthogonal", "glorot", "he")


def check_scheme(scheme: str, std: float) -> None:
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < math.inf:
        raise ValueError(f"init std must be a positive finite number, got {std!r}")


@torch.no_grad()
def fill_weight_(weight: Tensor, layer: nn.Module, scheme: str, std: float = 0.05,
                 generator: torch.Generator | None = None) -> Tensor:
    """Fill ``weight`` (of ``layer.weight``'s shape) as ``scheme`` draws ``layer``'s weight.

    A linear or convolutional layer: ``"default"`` is PyTorch's U(±1/√fan_in), ``"glorot"``
    U(±√(6/(fan_in + fan_out))), ``"he"`` N(0, 2/fan_in), ``"gaussian"`` N(0, std²),
    ``"orthogonal"`` an orthogonal matrix. A locally-connected weight (L_out, C_out, K) is one
    kernel per location: Gaussian entries, an orthogonal (C_out, K) matrix per location, He
    normal over the K inputs of a kernel, or, for ``"default"`` and ``"glorot"``, the layer's
    own Glorot uniform (the fans of the convolution of the same geometry)."""
    check_scheme(scheme, std)
    if scheme == "gaussian":
        return nn.init.normal_(weight, 0.0, std, generator=generator)
    if isinstance(layer, (LocallyConnected2d, LocallyConnectedTranspose2d)):
        if scheme == "he":
            return nn.init.normal_(weight, 0.0, math.sqrt(2 / weight.shape[-1]), generator=generator)
        if scheme == "orthogonal":
            for kernel in weight:
                nn.init.orthogonal_(kernel, generator=generator)
            return weight
        return nn.init.uniform_(weight, -layer.glorot_bound, layer.glorot_bound, generator=generator)
    if scheme == "orthogonal":
        return nn.init.orthogonal_(weight, generator=generator)
    if scheme == "he":
        return nn.init.kaiming_normal_(weight, nonlinearity="relu", generator=generator)
    if scheme == "glorot":
        return nn.init.xavier_uniform_(weight, generator=generator)
    return nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
