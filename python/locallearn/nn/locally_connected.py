"""Locally-connected layers (convolutions without weight sharing) and their transpose
maps, seed 003 §5.2 and §5.4.

Both hold a weight of the layout (H_out·W_out, C_out, C_in·kh·kw) — one kernel per
output location of the locally-connected map — and run through the autograd-enabled
ops of :mod:`locallearn.ops`.

Initialisation is Glorot uniform (seed 003 §3: "all layers are initialized using the
method suggested by Glorot & Bengio") with zero biases. The fans are those of the
convolution of the same geometry, fan_in = C_in·kh·kw and fan_out = C_out·kh·kw, so
the bound is √(6 / ((C_in + C_out)·kh·kw)): without weight sharing every output unit
still sums C_in·kh·kw inputs and every input unit still reaches at most C_out·kh·kw
outputs, which is all Glorot's variance argument counts. The generic fan formula
applied to the stacked (L_out, …) weight would count the L_out separate kernels into
both fans and shrink the weights by √L_out for no reason. The bound is symmetric in
the two fans, so a transpose map is drawn like the layer it mirrors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from locallearn.ops import locally_connected2d, locally_connected2d_transpose, locally_connected_output_size

IntPair = int | tuple[int, int]


def _pair(name: str, value: IntPair, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair)):
        raise ValueError(f"{name} must be an int ≥ {minimum} or a pair of them, got {value!r}")
    return tuple(pair)


class _LocallyConnectedBase(nn.Module):
    """Parameters and geometry shared by a locally-connected map and its transpose.

    The image side (C_in, H, W) is where the windows are cut; the grid side
    (C_out, H_out, W_out) has one kernel per window. A layer reads the image side and
    writes the grid side, a transpose the other way round; the bias has the shape of
    what the module writes."""

    def __init__(self, in_channels: int, out_channels: int, image_size: IntPair, kernel_size: IntPair,
                 stride: IntPair, padding: IntPair, dilation: IntPair, bias: bool, transposed: bool,
                 device, dtype) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        image_size = _pair("output_size" if transposed else "input_size", image_size, 1)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        self.dilation = _pair("dilation", dilation, 1)
        grid_size = locally_connected_output_size(image_size, **self.window())  # refuses a window that does not fit
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.output_size = (grid_size, image_size) if transposed else (image_size, grid_size)
        image_channels, grid_channels = (out_channels, in_channels) if transposed else (in_channels, out_channels)
        patch = self.kernel_size[0] * self.kernel_size[1]
        self.glorot_bound = math.sqrt(6 / ((image_channels + grid_channels) * patch))
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(grid_size[0] * grid_size[1], grid_channels, image_channels * patch,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, *self.output_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot uniform weight with the convolution's fans (module docstring), zero bias."""
        nn.init.uniform_(self.weight, -self.glorot_bound, self.glorot_bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def window(self) -> dict:
        """The window arguments of the ops."""
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, dilation=self.dilation)

    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels \
                or tuple(x.shape[2:]) != self.input_size:
            got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            height, width = self.input_size
            raise ValueError(f"{type(self).__name__} expects input of shape (B, {self.in_channels}, {height}, "
                             f"{width}), got {got}")

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
                f"output_size={self.output_size}, kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        return text if self.bias is not None else text + ", bias=False"


class LocallyConnected2d(_LocallyConnectedBase):
    """y[b, o, l] = Σ_k W[l, o, k] · patch_l(x_b)[k] + bias[o, l]: a convolution whose
    kernel differs at every output location l (seed 003 §5.2).

    ``input_size`` (H, W) fixes the output grid (H_out, W_out) and with it the weight
    (H_out·W_out, C_out, C_in·kh·kw) and the bias (C_out, H_out, W_out). Maps
    (B, C_in, H, W) to (B, C_out, H_out, W_out); zero padding, as nn.Conv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: IntPair, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, input_size, kernel_size, stride, padding, dilation, bias,
                         transposed=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return locally_connected2d(x, self.weight, self.bias, **self.window())


class LocallyConnectedTranspose2d(_LocallyConnectedBase):
    """x = Vy + c with V = Aᵀ the transpose of a locally-connected map A with its own
    weight: the inverse-shaped layer of target propagation (seed 003 §5.4).

    Arguments follow nn.ConvTranspose2d: ``in_channels`` is the channel count it reads
    (C_out of the mirrored layer), ``out_channels`` the one it writes (that layer's
    C_in), ``output_size`` the (H, W) it writes (that layer's ``input_size``); the
    window arguments are that layer's. The weight has that layer's layout
    (H_in·W_in, in_channels, out_channels·kh·kw), so assigning ``layer.weight`` ties
    the two; the bias c has the output's shape (out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, output_size: IntPair, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, output_size, kernel_size, stride, padding, dilation, bias,
                         transposed=True, device=device, dtype=dtype)

    @classmethod
    def mirroring(cls, layer: LocallyConnected2d, bias: bool = True) -> LocallyConnectedTranspose2d:
        """A transpose map from ``layer``'s output back to its input, with its own freshly
        initialised weight, on ``layer``'s device and dtype."""
        return cls(layer.out_channels, layer.in_channels, layer.input_size, bias=bias, device=layer.weight.device,
                   dtype=layer.weight.dtype, **layer.window())

    def forward(self, y: Tensor) -> Tensor:
        self.check_input(y)
        x = locally_connected2d_transpose(y, self.weight, self.output_size, **self.window())
        return x if self.bias is None else x + self.bias
