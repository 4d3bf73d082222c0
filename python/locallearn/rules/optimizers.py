"""The optimisers a rule can train with (``--optimizer``)."""

from __future__ import annotations

import torch


class StabilisedRMSprop(torch.optim.Optimizer):
    """RMSprop as Lee et al.'s DTP code builds it (``util.py``, ``rms_prop``; seed 002
    §4 trains DTP and DTP-σ with RMSprop "as done in [20]", that paper): centred, with
    momentum, and the stabiliser *inside* the square root. Per parameter, gradient g:

        m ← a m + (1 − a) g,   v ← a v + (1 − a) g²,
        u ← μ u − λ g / √(v − m² + s),   θ ← θ + u,

    with the code's a = 0.95, μ = 0.9, s = 0.001. Where torch's RMSprop (ε outside the
    root) gives every gradient a step of about λ, a gradient much smaller than √s here
    gets a step of about λ g / √s: a local loss that is already small barely moves."""

    def __init__(self, params, lr: float, *, averaging: float = 0.95, momentum: float = 0.9,
                 stabiliser: float = 1e-3, weight_decay: float = 0.0) -> None:
        if lr <= 0 or not 0 <= averaging < 1 or not 0 <= momentum < 1 or stabiliser <= 0 or weight_decay < 0:
            raise ValueError(f"StabilisedRMSprop needs lr > 0, 0 <= averaging, momentum < 1, stabiliser > 0 and "
                             f"weight_decay >= 0; got lr={lr}, averaging={averaging}, momentum={momentum}, "
                             f"stabiliser={stabiliser}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, averaging=averaging, momentum=momentum, stabiliser=stabiliser,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            a = group["averaging"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                gradient = parameter.grad
                if group["weight_decay"]:
                    gradient = gradient.add(parameter, alpha=group["weight_decay"])
                state = self.state[parameter]
                if not state:
                    for name in ("mean", "square_mean", "increment"):
                        state[name] = torch.zeros_like(parameter)
                mean, square_mean, increment = state["mean"], state["square_mean"], state["increment"]
                mean.mul_(a).add_(gradient, alpha=1 - a)
                square_mean.mul_(a).addcmul_(gradient, gradient, value=1 - a)
                scale = square_mean.addcmul(mean, mean, value=-1).add_(group["stabiliser"]).sqrt_()
                increment.mul_(group["momentum"]).addcdiv_(gradient, scale, value=-group["lr"])
                parameter.add_(increment)
        return loss


OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop,
              "rmsprop-dtp": StabilisedRMSprop}
"""By ``--optimizer`` name; ``rmsprop-dtp`` is :class:`StabilisedRMSprop`."""
