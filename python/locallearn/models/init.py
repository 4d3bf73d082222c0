"""Weight initialisation schemes the papers' recipes name (seed 002 §3, seed 003
Table 4, seed 001 §3): Gaussian with a given standard deviation, orthogonal, Glorot
uniform, He normal.
Biases are set to zero; batch-norm layers keep their (1, 0) initialisation."""

from __future__ import annotations

import torch
from torch import nn

from locallearn.nn.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d

INIT_SCHEMES = ("default", "gaussian", "orthogonal", "glorot", "he")


def initialize(model: nn.Module, scheme: str = "default", std: float = 0.05) -> None:
    """Re-initialise every linear, convolutional and locally-connected weight of ``model`` in place;
    ``"default"`` keeps PyTorch's initialisation, ``std`` is the Gaussian's."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if std <= 0:
        raise ValueError(f"init std must be positive, got {std}")
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if scheme == "gaussian":
                nn.init.normal_(module.weight, 0.0, std)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(module.weight)
            elif scheme == "he":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
        elif isinstance(module, (LocallyConnected2d, LocallyConnectedTranspose2d)):
            _initialize_locally_connected(module, scheme, std)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _initialize_locally_connected(module: LocallyConnected2d | LocallyConnectedTranspose2d, scheme: str,
                                  std: float) -> None:
    """A locally-connected weight (L_out, C_out, K) is one kernel per location: Gaussian
    entries, an orthogonal (C_out, K) matrix per location, He normal over the K inputs of
    a kernel, or the module's own Glorot uniform (the fans of the convolution of the same
    geometry)."""
    if scheme == "gaussian":
        nn.init.normal_(module.weight, 0.0, std)
    elif scheme == "he":
        nn.init.normal_(module.weight, 0.0, (2 / module.weight.shape[-1]) ** 0.5)
    elif scheme == "orthogonal":
        with torch.no_grad():
            for kernel in module.weight:
                nn.init.orthogonal_(kernel)
    else:
        module.reset_parameters()
