"""Direct feedback alignment's projection e B_ℓ of the output error to hidden layer ℓ
(Nøkland 2016; seed 003 §2.1.1, seed 002 §2) with B_ℓ never held: the native op generates
every entry B_ℓ[i, j] where it multiplies it, from (seed, ℓ, i, j), bit for bit the value
of :func:`~locallearn.ops.reference.feedback_columns`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from locallearn import _native
from locallearn.ops import reference
from locallearn.ops._checks import require_float, require_int, require_tensor

INDEX_LIMIT = 2**32
"""Rows, columns and layers are hashed as 32-bit values."""


def direct_feedback(error: Tensor, seed: int, layer: int, num_features: int, chunk: int = 16384) -> Tensor:
    """e B_ℓ: (B, K) → (B, N) in error's dtype, B_ℓ the K × N matrix of (seed, layer).

    Args:
        error: (B, K) output error e, float32, float64, float16 or bfloat16, 1 ≤ K < 2³²;
            it must not require grad (it is a gradient; the op is not differentiable).
        seed, layer: which matrix: any int64 seed, 0 ≤ layer < 2³².
        num_features: N, 0 ≤ N < 2³².
        chunk: columns the pure-PyTorch fallback generates at a time.

    The native op accumulates each e·B_ℓ[:, j] in float32 (float64 for float64 error);
    its result agrees with e @ B_ℓ to that rounding, not bit for bit (another summation
    order). Raises ValueError, before any kernel runs, for input it cannot take.
    """
    require_tensor("error", error)
    require_float("error", error)
    if error.dim() != 2 or not 1 <= error.shape[1] < INDEX_LIMIT:
        raise ValueError(f"error must be (B, K) with 1 ≤ K < 2³², got shape {tuple(error.shape)}")
    if error.requires_grad:
        raise ValueError("error requires grad, but direct_feedback is not differentiable (the error it projects "
                         "is itself a gradient): pass error.detach()")
    require_int("seed", seed, -(2**63), 2**63)
    require_int("layer", layer, 0, INDEX_LIMIT)
    require_int("num_features", num_features, 0, INDEX_LIMIT)
    require_int("chunk", chunk, 1, 2**63)
    if _native.serves(error.device):
        return torch.ops.locallearn.direct_feedback(error, seed, layer, num_features)
    with reference.autocast_off(error.device):
        return reference.direct_feedback(error, seed, layer, num_features, chunk)


if _native.extension is not None:

    @torch.library.register_fake("locallearn::direct_feedback")
    def _direct_feedback_fake(error, seed, layer, num_features):
        return error.new_empty((error.shape[0], num_features))
