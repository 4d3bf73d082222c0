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
from locallearn.ops import (direct_feedback, locally_connected2d, locally_connected2d_transpose,
                            locally_connected2d_weight_grad)
from locallearn.ops.reference import feedback_columns, project_in_chunks


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
        if min(in_features, out_features) < 1:
            raise ValueError(f"LinearFeedbackAlignment needs at least 1 input and 1 output feature, got "
                             f"{in_features} and {out_features}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        feedback = torch.empty_like(self.weight, requires_grad=False)
        nn.init.kaiming_uniform_(feedback, a=math.sqrt(5))
        self.register_buffer("feedback", feedback)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"LinearFeedbackAlignment takes (..., {self.in_features}) input, got {tuple(x.shape)}")
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
    map (seed 003 §5.4) with a fixed random weight of the layer's layout (a buffer, drawn
    like the weights: Glorot uniform with the convolution's fans)."""

    def __init__(self, in_channels: int, out_channels: int, input_size, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, input_size, kernel_size, stride, padding, dilation, bias,
                         device=device, dtype=dtype)
        feedback = torch.empty_like(self.weight, requires_grad=False)
        nn.init.uniform_(feedback, -self.glorot_bound, self.glorot_bound)
        self.register_buffer("feedback", feedback)

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
    if type(module) in (nn.Linear, nn.Conv2d, LocallyConnected2d):
        raise ValueError(f"convert_to_feedback_alignment replaces the layers inside a module, in place; a bare "
                         f"{type(module).__name__} cannot replace itself: wrap it, e.g. nn.Sequential(layer)")
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


class DirectFeedback(nn.Module):
    """The fixed random matrices B_ℓ (K × N_ℓ) of direct feedback alignment and the
    projection e ↦ e B_ℓ of the output error to hidden layer ℓ's features.

    ``mode="generated"`` never holds a B_ℓ: the projection is the op
    :func:`~locallearn.ops.direct_feedback`, which generates each entry of B_ℓ where it
    multiplies it (natively: tiles of K × 256 columns per CPU thread, shared memory on a
    GPU; its pure-PyTorch fallback ``chunk`` columns at a time, about
    max(16·K, 4·(K + batch))·chunk bytes) instead of K·N_ℓ·4. ``mode="stored"``
    materialises every B_ℓ once from the same generator, bit for bit (faster when they
    fit), and multiplies it ``chunk`` columns at a time. The two modes' projections agree
    to float32 rounding (the native op sums in another order). The seed is a buffer, so
    a checkpoint carries it; the stored matrices are rebuilt from it on load instead of
    being saved."""

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
        matrix = torch.empty(self.num_classes, self._feature_size(layer), device=self.seed.device)
        for start, stop in self._column_ranges(layer):
            matrix[:, start:stop] = feedback_columns(self._seed, layer, self.num_classes, start, stop, matrix.device)
        return matrix

    def forward(self, error: Tensor, layer: int) -> Tensor:
        """e B_ℓ for ``error`` e (batch × K, not requiring grad) in e's dtype: (batch × N_ℓ)."""
        if error.dim() != 2 or error.shape[1] != self.num_classes:
            raise ValueError(f"the DFA error must be (batch, K = {self.num_classes}), got {tuple(error.shape)}")
        size = self._feature_size(layer)
        if self.mode == "generated":
            return direct_feedback(error, self._seed, layer, size, self.chunk)
        matrix = getattr(self, f"matrix{layer}")
        return project_in_chunks(error, size, self.chunk, lambda start, stop: matrix[:, start:stop])

    def _feature_size(self, layer: int) -> int:
        """N_ℓ, or ValueError for a layer this module has no matrix for."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(self.feature_sizes):
            raise ValueError(f"layer {layer!r} has no feedback matrix: this DirectFeedback has layers "
                             f"0 to {len(self.feature_sizes) - 1}")
        return self.feature_sizes[layer]

    def _column_ranges(self, layer: int) -> list[tuple[int, int]]:
        size = self.feature_sizes[layer]
        return [(start, min(start + self.chunk, size)) for start in range(0, size, self.chunk)]
