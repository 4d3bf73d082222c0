"""Feedback layers: fixed random matrices that carry the error backwards in place of
the transposed weights.

- Feedback alignment (Lillicrap et al. 2016, described in seed 003 §2.1.1): a linear,
  convolutional or locally-connected layer computes its forward pass with W and sends
  the error to its input through a fixed random B of W's shape instead of W (δx = δy B
  for a linear layer, the transposed convolution with kernel B for a conv layer, the
  locally-connected transpose map with weight B for an LC layer); W's own gradient is
  the usual one.
- Direct feedback alignment (Nøkland 2016; seed 003 §2.1.1, seed 002 §2): the output
  error e (batch × K) reaches hidden layer ℓ directly as e B_ℓ, B_ℓ a fixed random
  K × N_ℓ matrix. For conv features N_ℓ = C·H·W makes B_ℓ huge (seed 003 §3.3 ran out
  of memory on ImageNet), so :class:`DirectFeedback` can generate B_ℓ on the fly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.nn.locally_connected import LocallyConnected2d
from locallearn.nn.weight_init import fill_weight_
from locallearn.ops import locally_connected2d, locally_connected2d_transpose, locally_connected2d_weight_grad


class _LinearFeedbackAlignmentFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, feedback)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, feedback = ctx.saved_tensors
        grad_x = grad_out @ feedback.to(grad_out.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = grad_out.flatten(0, -2).T @ x.flatten(0, -2).to(grad_out.dtype)
        grad_bias = None if ctx.bias_dtype is None else grad_out.flatten(0, -2).sum(0).to(ctx.bias_dtype)
        return grad_x, grad_weight.to(weight.dtype), grad_bias, None


class LinearFeedbackAlignment(nn.Linear):
    """``nn.Linear`` whose input gradient travels through a fixed random feedback
    matrix (a buffer, drawn like the weights and never trained)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        feedback = torch.empty_like(self.weight, requires_grad=False)
        nn.init.kaiming_uniform_(feedback, a=math.sqrt(5))
        self.register_buffer("feedback", feedback)

    def forward(self, x: Tensor) -> Tensor:
        return _LinearFeedbackAlignmentFunction.apply(x, self.weight, self.bias, self.feedback)


class _Conv2dFeedbackAlignmentFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
        ctx.save_for_backward(x, weight, feedback)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.geometry = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, feedback = ctx.saved_tensors
        geometry = ctx.geometry
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, feedback.to(grad_out.dtype), grad_out, *geometry)
            grad_x = grad_x.to(x.dtype)
        grad_weight = torch.nn.grad.conv2d_weight(x.to(grad_out.dtype), weight.shape, grad_out, *geometry)
        grad_bias = None if ctx.bias_dtype is None else grad_out.sum((0, 2, 3)).to(ctx.bias_dtype)
        return grad_x, grad_weight.to(weight.dtype), grad_bias, None, None, None, None, None


class Conv2dFeedbackAlignment(nn.Conv2d):
    """``nn.Conv2d`` (zero padding given as numbers) whose input gradient is the
    transposed convolution of the output gradient with a fixed random kernel of the
    weight's shape (a buffer, drawn like the weights and never trained)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None) -> None:
        if isinstance(padding, str) or padding_mode != "zeros":
            raise ValueError(f"Conv2dFeedbackAlignment needs numeric zero padding, got padding={padding!r}, "
                             f"padding_mode={padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        feedback = torch.empty_like(self.weight, requires_grad=False)
        nn.init.kaiming_uniform_(feedback, a=math.sqrt(5))
        self.register_buffer("feedback", feedback)

    def forward(self, x: Tensor) -> Tensor:
        return _Conv2dFeedbackAlignmentFunction.apply(x, self.weight, self.bias, self.feedback, self.stride,
                                                      self.padding, self.dilation, self.groups)


class _LocallyConnectedFeedbackAlignmentFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, window: dict) -> Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.has_bias, ctx.window = bias is not None, window
        return locally_connected2d(x, weight, bias, **window)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, feedback = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = locally_connected2d_transpose(grad_out, feedback, tuple(x.shape[2:]), **ctx.window)
        grad_weight = locally_connected2d_weight_grad(x, grad_out, **ctx.window)
        grad_bias = grad_out.sum(0) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None, None


class LocallyConnectedFeedbackAlignment(LocallyConnected2d):
    """:class:`~locallearn.nn.LocallyConnected2d` whose input gradient is the transpose
    map (seed 003 §5.4) with a fixed random weight of the layer's layout (a buffer)."""

    def __init__(self, in_channels: int, out_channels: int, input_size, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, input_size, kernel_size, stride, padding, dilation, bias,
                         device=device, dtype=dtype)
        self.register_buffer("feedback", torch.empty_like(self.weight, requires_grad=False))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return _LocallyConnectedFeedbackAlignmentFunction.apply(x, self.weight, self.bias, self.feedback,
                                                                self.window())


def convert_to_feedback_alignment(module: nn.Module, seed: int = 0, init: str = "default",
                                  init_std: float = 0.05) -> nn.Module:
    """Replace, in place, every ``nn.Linear``, ``nn.Conv2d`` and :class:`LocallyConnected2d`
    inside ``module`` by its feedback-alignment version holding the same weight and bias
    parameters. Each feedback matrix is drawn like its layer's weights, with the
    initialisation scheme ``init`` (:func:`~locallearn.nn.weight_init.fill_weight_`; the
    FA family's is Glorot in seed 002 §4 and seed 003 §5), in module order from a generator
    seeded with ``seed``. Returns ``module``."""
    generator = torch.Generator().manual_seed(seed)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                replacement: nn.Module = LinearFeedbackAlignment(child.in_features, child.out_features,
                                                                 child.bias is not None, device="meta")
            elif type(child) is nn.Conv2d:
                replacement = Conv2dFeedbackAlignment(child.in_channels, child.out_channels, child.kernel_size,
                                                      child.stride, child.padding, child.dilation, child.groups,
                                                      child.bias is not None, child.padding_mode, device="meta")
            elif type(child) is LocallyConnected2d:
                replacement = LocallyConnectedFeedbackAlignment(child.in_channels, child.out_channels,
                                                                child.input_size, bias=child.bias is not None,
                                                                device="meta", **child.window())
            else:
                continue
            weight = child.weight
            feedback = fill_weight_(torch.empty(weight.shape, dtype=torch.float64), child, init, init_std, generator)
            replacement.weight, replacement.bias = weight, child.bias
            replacement.feedback = feedback.to(device=weight.device, dtype=weight.dtype)
            replacement.train(child.training)
            setattr(parent, name, replacement)
    return module


# ---------------------------------------------------------------- direct feedback alignment

FEEDBACK_MODES = ("generated", "stored")
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
    output error). Temporaries: two int64 K × (stop − start) grids."""
    row_salt, column_salt = _salts(seed, layer)
    rows = _mix32(torch.arange(num_rows, device=device) ^ row_salt)
    grid = rows[:, None] ^ _mix32(torch.arange(start, stop, device=device) ^ column_salt)
    grid = _mix32(grid)
    grid >>= 7
    grid |= 1
    grid -= 1 << 24
    return grid.to(torch.float32).mul_(math.sqrt(3 / num_rows) / 2**24)


class DirectFeedback(nn.Module):
    """The fixed random matrices B_ℓ (K × N_ℓ) of direct feedback alignment and the
    projection e ↦ e B_ℓ of the output error to hidden layer ℓ's features.

    ``mode="generated"`` never holds a B_ℓ: the projection computes it ``chunk`` columns
    at a time from :func:`feedback_columns`, so its extra memory is about
    max(16·K, 4·(K + batch))·chunk bytes (two int64 grids while generating, then the
    float32 columns and one chunk of the product) instead of K·N_ℓ·4. ``mode="stored"``
    materialises every B_ℓ once from the same generator (faster when they fit) and
    slices the same chunks, so both modes give bit-identical projections. The seed is
    a buffer, so a checkpoint carries it; the stored matrices are rebuilt from it on
    load instead of being saved."""

    def __init__(self, num_classes: int, feature_sizes: list[int], seed: int = 0, mode: str = "generated",
                 chunk: int = 16384, device: torch.device | str | None = None) -> None:
        super().__init__()
        if mode not in FEEDBACK_MODES:
            raise ValueError(f"unknown DFA feedback mode {mode!r}; choose one of {', '.join(FEEDBACK_MODES)}")
        if chunk < 1:
            raise ValueError(f"the DFA chunk must be at least 1 column, got {chunk}")
        if num_classes < 1 or any(not 1 <= size < 2**32 for size in feature_sizes):
            raise ValueError(f"DFA needs K ≥ 1 and 1 ≤ N_ℓ < 2³², got K={num_classes}, N={feature_sizes}")
        self.num_classes, self.feature_sizes, self.mode, self.chunk = num_classes, list(feature_sizes), mode, chunk
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64, device=device))
        self._build(seed)
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._build(int(module.seed)))

    def _build(self, seed: int) -> None:
        """Remember ``seed`` as a Python int (no device sync per step) and, in stored
        mode, materialise every B_ℓ (non-persistent buffers ``matrix<ℓ>``)."""
        self._seed = seed
        if self.mode == "stored":
            for layer in range(len(self.feature_sizes)):
                self.register_buffer(f"matrix{layer}", self.matrix(layer), persistent=False)

    def matrix(self, layer: int) -> Tensor:
        """B_ℓ materialised (float32, K × N_ℓ) from the generator, whatever the mode."""
        matrix = torch.empty(self.num_classes, self.feature_sizes[layer], device=self.seed.device)
        for start, stop in self._column_ranges(layer):
            matrix[:, start:stop] = feedback_columns(self._seed, layer, self.num_classes, start, stop, matrix.device)
        return matrix

    def forward(self, error: Tensor, layer: int) -> Tensor:
        """e B_ℓ for ``error`` e (batch × K) in e's dtype: (batch × N_ℓ)."""
        projected = error.new_empty(error.shape[0], self.feature_sizes[layer])
        for start, stop in self._column_ranges(layer):
            projected[:, start:stop] = error @ self._columns(layer, start, stop, error.device).to(error.dtype)
        return projected

    def _columns(self, layer: int, start: int, stop: int, device: torch.device) -> Tensor:
        if self.mode == "stored":
            return getattr(self, f"matrix{layer}")[:, start:stop]
        return feedback_columns(self._seed, layer, self.num_classes, start, stop, device)

    def _column_ranges(self, layer: int) -> list[tuple[int, int]]:
        size = self.feature_sizes[layer]
        return [(start, min(start + self.chunk, size)) for start in range(0, size, self.chunk)]
