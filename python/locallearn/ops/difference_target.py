"""DTP's difference target through a learned fully-connected inverse g(h) = σ(V h + c)
(Lee et al. 2015; seed 003 eq. (2); seed 002's DTP-σ, eq. (8), read with DTP's signs):

    t_below = h_below + g(t_upper) − g(h_upper)

as one op: one GEMM of the stacked rows [t_upper; h_upper] (2B × N_upper) with Vᵀ, the
bias, σ and the difference in its epilogue (no pre-activation written out on a GPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from locallearn import _native
from locallearn.ops import reference
from locallearn.ops._checks import require_float, require_same_device, require_tensor

DIFFERENCE_TARGET_ACTIVATIONS = tuple(reference.DIFFERENCE_TARGET_ACTIVATIONS)
"""The activations σ the op serves: every elementwise one of ``locallearn.models.network.ACTIVATIONS``."""


def difference_target(h_below: Tensor, t_upper: Tensor, h_upper: Tensor, weight: Tensor, bias: Tensor,
                      activation: str) -> Tensor:
    """h_below + σ(t_upper Vᵀ + c) − σ(h_upper Vᵀ + c): the target of the layer below.

    Args:
        h_below: (B, N_below), that layer's activity h_{ℓ−1}.
        t_upper, h_upper: (B, N_upper), the target ĥ_ℓ and activity h_ℓ of the layer above.
        weight, bias: V (N_below, N_upper) and c (N_below,), as ``nn.Linear(N_upper, N_below)``
            of :meth:`~locallearn.rules.inverses.LayerInverse.of_linear` holds them.
        activation: σ by name, one of :data:`DIFFERENCE_TARGET_ACTIVATIONS` (leaky_relu with
            slope 0.01, elu with α = 1, as the network builds them).

    All five tensors share one float dtype and device; the op accumulates in float32
    (float64 for float64) and returns that dtype. Differentiable in all five. Raises
    ValueError, before any kernel runs, for input it cannot take.
    """
    named = {"h_below": h_below, "t_upper": t_upper, "h_upper": h_upper, "weight": weight, "bias": bias}
    for name, tensor in named.items():
        require_tensor(name, tensor)
        require_float(name, tensor)
        if tensor.dtype != h_below.dtype:
            raise ValueError(f"{name} must have the dtype of h_below ({h_below.dtype}), got {tensor.dtype}")
        require_same_device(name, tensor, "h_below", h_below)
    if h_below.dim() != 2 or t_upper.dim() != 2:
        raise ValueError(f"h_below and t_upper must be (B, N_below) and (B, N_upper), got shapes "
                         f"{tuple(h_below.shape)} and {tuple(t_upper.shape)}")
    (batch, below), upper = h_below.shape, t_upper.shape[1]
    if t_upper.shape[0] != batch or h_upper.shape != t_upper.shape:
        raise ValueError(f"t_upper and h_upper must both be (B, N_upper) with B = {batch} (h_below's), got "
                         f"{tuple(t_upper.shape)} and {tuple(h_upper.shape)}")
    if weight.shape != (below, upper) or bias.shape != (below,):
        raise ValueError(f"weight and bias must be (N_below, N_upper) = {(below, upper)} and ({below},), got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    if activation not in DIFFERENCE_TARGET_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(DIFFERENCE_TARGET_ACTIVATIONS)} (the elementwise "
                         f"activations the op fuses), got {activation!r}")
    if _native.serves(h_below.device):
        return torch.ops.locallearn.difference_target(h_below, t_upper, h_upper, weight, bias, activation)
    with reference.autocast_off(h_below.device):
        return reference.difference_target(h_below, t_upper, h_upper, weight, bias, activation)


def _activation_slope(activation: str, x: Tensor) -> Tensor:
    """σ′(x), as torch's own backward formulas give it (0 at relu's kink)."""
    if activation == "tanh":
        return 1 - torch.tanh(x).square()
    below = torch.exp(x) if activation == "elu" else torch.full_like(x, 0.01 if activation == "leaky_relu" else 0.0)
    return torch.where(x > 0, 1.0, below)


if _native.extension is not None:

    @torch.library.register_fake("locallearn::difference_target")
    def _difference_target_fake(h_below, t_upper, h_upper, weight, bias, activation):
        return h_below.new_empty(h_below.shape)

    def _setup_context(ctx, inputs, output):
        _, t_upper, h_upper, weight, bias, ctx.activation = inputs
        ctx.save_for_backward(t_upper, h_upper, weight, bias)

    def _backward(ctx, grad):
        """With z = [t_upper; h_upper] Vᵀ + c and δ = [grad; −grad] ⊙ σ′(z): the gradients
        are grad for h_below, δ V split in two for t_upper and h_upper, δᵀ [t_upper; h_upper]
        for V and Σ_b δ for c; recomputed in opmath from the saved inputs."""
        t_upper, h_upper, weight, bias = ctx.saved_tensors
        dtype = reference.opmath_dtype(grad.dtype)
        with reference.autocast_off(grad.device):
            stacked = torch.cat([t_upper, h_upper]).to(dtype)
            pre_activation = torch.addmm(bias.to(dtype), stacked, weight.to(dtype).T)
            delta = torch.cat([grad, -grad]).to(dtype) * _activation_slope(ctx.activation, pre_activation)
            grad_t_upper, grad_h_upper = (delta @ weight.to(dtype)).to(grad.dtype).split(len(grad))
            grad_weight = (delta.T @ stacked).to(grad.dtype)
            return grad, grad_t_upper, grad_h_upper, grad_weight, delta.sum(0).to(grad.dtype), None

    torch.library.register_autograd("locallearn::difference_target", _backward, setup_context=_setup_context)
