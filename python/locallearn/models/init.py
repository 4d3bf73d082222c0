"""Re-initialising a whole model with one of the papers' schemes
(:mod:`locallearn.nn.weight_init`). Biases are set to zero; batch-norm layers keep
their (1, 0) initialisation."""

from __future__ import annotations

from torch import nn

from locallearn.nn.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d
from locallearn.nn.weight_init import INIT_SCHEMES, check_scheme, fill_weight_

__all__ = ["INIT_SCHEMES", "initialize"]


def initialize(model: nn.Module, scheme: str = "default", std: float = 0.05) -> None:
    """Re-initialise every linear, convolutional and locally-connected weight of ``model`` in place;
    ``"default"`` keeps PyTorch's initialisation, ``std`` is the Gaussian's."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    check_scheme(scheme, std)
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, LocallyConnected2d, LocallyConnectedTranspose2d)):
            fill_weight_(module.weight, module, scheme, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
