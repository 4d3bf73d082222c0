"""Pure-PyTorch definitions of the native ops: the oracle in tests and the fallback.

They compute in float32 (float64 for float64 input) and are differentiable by
autograd. No input validation here: the public functions in :mod:`locallearn.ops`
validate before calling either implementation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from locallearn.ops._checks import require_int

SIMILARITY_EPS = 1e-8
"""eps of seed 004's reference code: x̃_i / (‖x̃_i‖ + eps)."""


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute in: float32 for half precision, else the dtype itself."""
    return torch.promote_types(dtype, torch.float32)


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which ``torch.autocast`` leaves ``device``'s operations alone: the
    references pick their own precision, and autocast must not recast their products."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _UpcastSaturatingGrad(torch.autograd.Function):
    """``x.to(dtype)`` whose backward saturates the gradient to x's finite range.

    A zero row has a gradient of order 1/eps; in float16 it would overflow to inf.
    The native ops saturate instead, and so does the reference.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.input_dtype = x.dtype
        return x.to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        limit = torch.finfo(ctx.input_dtype).max
        return grad.clamp(-limit, limit).to(ctx.input_dtype), None


def _upcast(x: Tensor) -> Tensor:
    dtype = opmath_dtype(x.dtype)
    return x if x.dtype == dtype else _UpcastSaturatingGrad.apply(x, dtype)


def channel_std(x: Tensor) -> Tensor:
    """Unbiased standard deviation over space of every channel: (B, C, *spatial) → (B, C),
    in the opmath dtype (float32 for half precision).

    Written through the norm of the centred values so that a constant channel gets
    a zero gradient rather than the NaN of ``torch.std``'s backward.
    """
    values = _upcast(x).flatten(2)
    centred = values - values.mean(dim=2, keepdim=True)
    return torch.linalg.vector_norm(centred, dim=2) / (values.shape[2] - 1) ** 0.5


def similarity_matrix(x: Tensor) -> Tensor:
    """S(X) of seed 004 eq. (5): cosine similarity of the row-centred rows of X (B, D).

    s_ij = x̃_iᵀ x̃_j / ((‖x̃_i‖ + eps)(‖x̃_j‖ + eps)), clamped to [-1, 1]; x̃_i is
    row i minus its mean. A zero row has zero similarity to every row. Since
    |s_ij| < 1 holds exactly, the clamp only catches rounding and passes the
    gradient through unchanged (rounding must not switch a pair's gradient off).
    """
    rows = _upcast(x.flatten(1))
    centred = rows - rows.mean(dim=1, keepdim=True)
    normalized = centred / (torch.linalg.vector_norm(centred, dim=1, keepdim=True) + SIMILARITY_EPS)
    gram = normalized @ normalized.T
    return gram + (gram.clamp(-1.0, 1.0) - gram).detach()


def label_similarity_matrix(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """S(Y) of the one-hot matrix Y of ``labels`` (seed 004 eq. (4))."""
    return similarity_matrix(torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype))


def reduces_by_channel_std(shape: torch.Size) -> bool:
    """Whether the similarity loss reduces activations of this shape by channel_std
    (seed 004 §3.1): (B, C, H, W) with C > 3 and H·W > 1; others are flattened."""
    return len(shape) == 4 and shape[1] > 3 and shape[2] * shape[3] > 1


def similarity_matching_loss(
    features: Tensor,
    labels: Tensor | None = None,
    target: Tensor | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """L_sim of seed 004 eq. (4), as a mean: Σ_ij (S(H)_ij − S(Y)_ij)² / B².

    ``target`` is S(Y) itself (B, B); with ``labels`` S(Y) is that of their
    one-hot matrix with ``num_classes`` columns.
    """
    reduced = channel_std(features) if reduces_by_channel_std(features.shape) else features.flatten(1)
    similarity = similarity_matrix(reduced)
    if target is None:
        target = label_similarity_matrix(labels, num_classes, similarity.dtype)
    return (similarity - target.to(similarity.dtype)).square().mean()


def _locally_connected_patches(
    input: Tensor, kernel_size: tuple[int, int], stride, padding, dilation
) -> Tensor:
    """The receptive fields of every output location, (B, C_in·kh·kw, L_out), ordered
    (c, i, j) within a patch like the last dim of the locally-connected weight."""
    return torch.nn.functional.unfold(input, kernel_size, dilation=dilation, padding=padding, stride=stride)


def locally_connected2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Convolution without weight sharing: out[b, o, l] = Σ_k W[l, o, k] · patch_l(x_b)[k] + bias[o, l].

    input (B, C_in, H, W), weight (L_out, C_out, C_in·kh·kw), bias (C_out, H_out, W_out)
    or None → (B, C_out, H_out, W_out), computed in the opmath dtype and returned in
    input's dtype.
    """
    dtype = opmath_dtype(input.dtype)
    out_h, out_w = locally_connected_output_size(input.shape[-2:], kernel_size, stride, padding, dilation)
    patches = _locally_connected_patches(input.to(dtype), kernel_size, stride, padding, dilation)
    output = torch.einsum("bkl,lok->bol", patches, weight.to(dtype))
    output = output.reshape(input.shape[0], weight.shape[1], out_h, out_w)
    if bias is not None:
        output = output + bias.to(dtype)
    return output.to(input.dtype)


def locally_connected2d_transpose(
    grad_output: Tensor,
    weight: Tensor,
    input_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """The adjoint of :func:`locally_connected2d` in its input: (B, C_out, H_out, W_out) →
    (B, C_in, H, W) with ⟨LC(x), y⟩ = ⟨x, LCᵀ(y)⟩. It is the input gradient of the
    layer, and the transpose map seed 003 §5.4 uses for inverses of LC layers."""
    dtype = opmath_dtype(grad_output.dtype)
    patches = torch.einsum("bol,lok->bkl", grad_output.to(dtype).flatten(2), weight.to(dtype))
    grad_input = torch.nn.functional.fold(
        patches, tuple(input_size), kernel_size, dilation=dilation, padding=padding, stride=stride
    )
    return grad_input.to(grad_output.dtype)


def locally_connected2d_weight_grad(
    input: Tensor,
    grad_output: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Gradient of Σ ⟨LC(x; W), grad_output⟩ in W: (L_out, C_out, C_in·kh·kw), summed over
    the batch, in input's dtype."""
    dtype = opmath_dtype(input.dtype)
    patches = _locally_connected_patches(input.to(dtype), kernel_size, stride, padding, dilation)
    return torch.einsum("bkl,bol->lok", patches, grad_output.to(dtype).flatten(2)).to(input.dtype)


def locally_connected_output_size(
    input_size: tuple[int, int], kernel_size, stride, padding, dilation
) -> tuple[int, int]:
    """(H_out, W_out) of a convolution-shaped window sweep, as for ``torch.nn.Conv2d``."""
    return tuple(
        (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
        for size, kernel, step, pad, dil in zip(input_size, kernel_size, stride, padding, dilation)
    )


DIFFERENCE_TARGET_ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "tanh": torch.tanh,
    "elu": F.elu,
}
"""σ of :func:`difference_target` by name: the elementwise activations of
``locallearn.models.network.ACTIVATIONS``, with their constants there."""


def difference_target(h_below: Tensor, t_upper: Tensor, h_upper: Tensor, weight: Tensor, bias: Tensor,
                      activation: str) -> Tensor:
    """DTP's target for the layer below, h_below + g(t_upper) − g(h_upper) (seed 003 eq. (2)),
    through the learned inverse g(h) = σ(V h + c) (V = ``weight``, c = ``bias``), computed in
    the opmath dtype and returned in h_below's."""
    dtype = opmath_dtype(h_below.dtype)
    sigma = DIFFERENCE_TARGET_ACTIVATIONS[activation]

    def inverse(h: Tensor) -> Tensor:
        return sigma(F.linear(h.to(dtype), weight.to(dtype), bias.to(dtype)))

    return (h_below.to(dtype) + (inverse(t_upper) - inverse(h_upper))).to(h_below.dtype)


# ---------------------------------------------------------------- DFA's generated feedback

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x5BD1E995)  # odd and below 2³¹: a 32-bit value times one fits in int64


def _mix32(x):
    """A bijective hash of 32-bit values held in Python ints or int64 tensors (in place
    on tensors): xor-shift, multiply, xor-shift, multiply, xor-shift, each product
    taken mod 2³² by a mask, so that no int64 ever overflows."""
    x ^= x >> 16
    x *= _MULTIPLIERS[0]
    x &= _MASK32
    x ^= x >> 15
    x *= _MULTIPLIERS[1]
    x &= _MASK32
    x ^= x >> 16
    return x


def _salts(seed: int, layer: int) -> tuple[int, int]:
    """The row and column salts of layer ``layer``'s matrix under ``seed`` (any int64)."""
    key = _mix32((seed & _MASK32) ^ _mix32(((seed >> 32) & _MASK32) ^ 0x9E3779B9))
    key = _mix32(key ^ _mix32(layer ^ 0x632BE5AB))
    return _mix32(key ^ 0x85EBCA6B), _mix32(key ^ 0xC2B2AE35)


def feedback_columns(seed: int, layer: int, num_rows: int, start: int, stop: int,
                     device: torch.device | str = "cpu") -> Tensor:
    """Columns ``start:stop`` of the DFA feedback matrix B_ℓ (``num_rows`` = K rows) as
    float32, computed from the indices alone (a counter-based generator):

        B_ℓ[i, j] = (2·(u >> 8) + 1 − 2²⁴) · √(3/K) / 2²⁴,  u = mix(mix(i ⊕ s_row) ⊕ mix(j ⊕ s_col))

    with ``mix`` the 32-bit hash above and the salts from (seed, ℓ): the 2²⁴ odd
    multiples of √(3/K)/2²⁴ in (−√(3/K), √(3/K)), equally likely, so B_ℓ is uniform with
    mean 0 and variance 1/K (each unit's feedback e·B_ℓ[:, j] has the size of an average
    output error). Temporaries: two int64 K × (stop − start) grids. Raises ValueError
    for indices outside the generator's 32-bit range, no rows, or stop < start."""
    require_int("seed", seed, -(2**63), 2**63)
    require_int("layer", layer, 0, 2**32)
    require_int("num_rows", num_rows, 1, 2**32)
    require_int("start", start, 0, 2**32)
    require_int("stop", stop, start, 2**32 + 1)
    row_salt, column_salt = _salts(seed, layer)
    rows = _mix32(torch.arange(num_rows, device=device) ^ row_salt)
    grid = rows[:, None] ^ _mix32(torch.arange(start, stop, device=device) ^ column_salt)
    grid = _mix32(grid)
    grid >>= 7
    grid |= 1
    grid -= 1 << 24
    return grid.to(torch.float32).mul_(math.sqrt(3 / num_rows) / 2**24)


def project_in_chunks(error: Tensor, num_features: int, chunk: int, columns: Callable[[int, int], Tensor]) -> Tensor:
    """error @ B in error's dtype, ``chunk`` columns at a time, B's columns ``start:stop``
    given by ``columns(start, stop)``."""
    projected = error.new_empty(error.shape[0], num_features)
    for start in range(0, num_features, chunk):
        stop = min(start + chunk, num_features)
        projected[:, start:stop] = error @ columns(start, stop).to(error.dtype)
    return projected


def direct_feedback(error: Tensor, seed: int, layer: int, num_features: int, chunk: int = 16384) -> Tensor:
    """e B_ℓ of direct feedback alignment, B_ℓ = :func:`feedback_columns` of (seed, layer)
    with K = error's columns, generated ``chunk`` columns at a time: (B, K) → (B, N)."""
    return project_in_chunks(error, num_features, chunk, lambda start, stop: feedback_columns(
        seed, layer, error.shape[1], start, stop, error.device))
