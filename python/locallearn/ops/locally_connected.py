"""Locally-connected 2-d map (a convolution without weight sharing), its transpose and
its weight gradient: the LC layers of seed 003 §5.2 and the transpose maps of §5.4.

    out[b, o, l] = Σ_k W[l, o, k] · patch_l(x_b)[k] + bias[o, l]

Weight layout (L_out, C_out, C_in·kh·kw), L_out = H_out·W_out in row-major order. Each
location's weight is then one contiguous row-major (C_out, K) matrix, so the layer is
a batched GEMM over locations (out_l = patches_l · W_lᵀ) with no reshuffling, and K is
ordered (c, i, j) as ``torch.nn.functional.unfold`` orders a patch, so the weight
applies directly to unfolded input. ``kernel_size`` is an explicit argument because
K = C_in·kh·kw does not say how it splits into channels and kernel taps.

Every op computes in the opmath dtype (float32 for half precision) and returns the
dtype of its first tensor argument; ``torch.autocast`` does not change that.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from locallearn import _native
from locallearn.ops import reference
from locallearn.ops._checks import require_float, require_same_device, require_tensor

IntPair = int | tuple[int, int]
Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


def locally_connected_output_size(
    input_size: IntPair, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1
) -> tuple[int, int]:
    """(H_out, W_out) of the window sweep over an (H, W) input, as for ``torch.nn.Conv2d``."""
    window = _window(kernel_size, stride, padding, dilation)
    input_size = _pair("input_size", input_size, 1)
    _check_window_fits(input_size, window)
    return reference.locally_connected_output_size(input_size, *window)


def locally_connected2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """Locally-connected map: (B, C_in, H, W) → (B, C_out, H_out, W_out), zero padding.

    Args:
        input: (B, C_in, H, W), float32, float64, float16 or bfloat16.
        weight: (H_out·W_out, C_out, C_in·kh·kw) in input's dtype (module docstring).
        bias: (C_out, H_out, W_out) or None.
        kernel_size, stride, padding, dilation: ints or (height, width) pairs, as for
            ``torch.nn.functional.conv2d``.

    Differentiable in input, weight and bias (twice, too). Raises ValueError, before
    any kernel runs, for input the op cannot take.
    """
    window = _window(kernel_size, stride, padding, dilation)
    _check_input_side("input", input, window)
    out_size = reference.locally_connected_output_size(input.shape[2:], *window)
    _check_weight(weight, input, "input", window[0], out_size, in_channels=input.shape[1])
    if bias is not None:
        require_tensor("bias", bias)
        _require_same_dtype("bias", bias, "input", input)
        require_same_device("bias", bias, "input", input)
        expected = (weight.shape[1], *out_size)
        if bias.shape != expected:
            raise ValueError(f"bias must be (C_out, H_out, W_out) = {expected}, got {tuple(bias.shape)}")
    return _run("locally_connected2d", input.device, input, weight, bias, *window)


def locally_connected2d_transpose(
    grad_output: Tensor,
    weight: Tensor,
    input_size: IntPair,
    *,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """The transpose (adjoint) of :func:`locally_connected2d` in its input:
    (B, C_out, H_out, W_out) → (B, C_in, H, W) with ⟨LC(x), y⟩ = ⟨x, LCᵀ(y)⟩.

    It is the layer's input gradient and the transpose map of seed 003 §5.4.
    ``input_size`` is (H, W) of the layer's input (several input sizes can give the
    same output grid); the window arguments and weight are the layer's. Differentiable
    in grad_output and weight.
    """
    window = _window(kernel_size, stride, padding, dilation)
    input_size = _pair("input_size", input_size, 1)
    require_tensor("grad_output", grad_output)
    require_float("grad_output", grad_output)
    _require_dims("grad_output", grad_output, "(B, C_out, H_out, W_out)")
    _check_window_fits(input_size, window)
    out_size = reference.locally_connected_output_size(input_size, *window)
    if tuple(grad_output.shape[2:]) != out_size:
        raise ValueError(
            f"grad_output must be (B, C_out, H_out, W_out) with (H_out, W_out) = {out_size} for input_size "
            f"{input_size} and this window, got {tuple(grad_output.shape)}"
        )
    _check_weight(weight, grad_output, "grad_output", window[0], out_size, out_channels=grad_output.shape[1])
    return _run("locally_connected2d_transpose", grad_output.device, grad_output, weight, input_size, *window)


def locally_connected2d_weight_grad(
    input: Tensor,
    grad_output: Tensor,
    *,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """The gradient in W of Σ ⟨LC(input; W), grad_output⟩, summed over the batch:
    (H_out·W_out, C_out, C_in·kh·kw) in input's dtype. Local rules use it for weight
    updates driven by their own error signals (e.g. feedback alignment)."""
    window = _window(kernel_size, stride, padding, dilation)
    _check_input_side("input", input, window)
    require_tensor("grad_output", grad_output)
    _require_same_dtype("grad_output", grad_output, "input", input)
    require_same_device("grad_output", grad_output, "input", input)
    _require_dims("grad_output", grad_output, "(B, C_out, H_out, W_out)")
    out_size = reference.locally_connected_output_size(input.shape[2:], *window)
    if grad_output.shape[0] != input.shape[0] or tuple(grad_output.shape[2:]) != out_size:
        expected = (input.shape[0], "C_out", *out_size)
        raise ValueError(f"grad_output must be (B, C_out, H_out, W_out) = {expected}, got {tuple(grad_output.shape)}")
    return _run("locally_connected2d_weight_grad", input.device, input, grad_output, *window)


@contextlib.contextmanager
def tensor_cores(enabled: bool):
    """Within the block, the CUDA kernels of the three ops may use tensor cores (True, the
    default outside any block) or run their SIMT kernels for every dtype (False).

    For tests and benchmarks of the SIMT kernels on devices whose tensor cores would
    otherwise serve half precision (and float32 where TF32 is allowed). The switch is
    process-wide, not per thread. Needs the CUDA build of ``locallearn._C``.
    """
    extension = _native.extension
    if extension is None or not extension.with_cuda:
        raise RuntimeError("locallearn.ops.locally_connected.tensor_cores needs locallearn._C built with CUDA "
                           f"({_native.load_error or 'this build has no CUDA ops'})")
    previous = extension.tensor_cores_enabled()
    extension.set_tensor_cores_enabled(bool(enabled))
    try:
        yield
    finally:
        extension.set_tensor_cores_enabled(previous)


def _pair(name: str, value: IntPair, minimum: int) -> tuple[int, int]:
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(v) and v >= minimum for v in pair)):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return tuple(pair)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def _window(kernel_size: IntPair, stride: IntPair, padding: IntPair, dilation: IntPair) -> Window:
    return (
        _pair("kernel_size", kernel_size, 1),
        _pair("stride", stride, 1),
        _pair("padding", padding, 0),
        _pair("dilation", dilation, 1),
    )


def _require_dims(name: str, tensor: Tensor, layout: str) -> None:
    if tensor.dim() != layout.count(",") + 1:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")


def _require_same_dtype(name: str, tensor: Tensor, reference_name: str, reference_tensor: Tensor) -> None:
    if tensor.dtype != reference_tensor.dtype:
        raise ValueError(
            f"{name} must have the dtype of {reference_name} ({reference_tensor.dtype}), got {tensor.dtype}"
        )


def _check_window_fits(input_size: tuple[int, int], window: Window) -> None:
    kernel_size, _, padding, dilation = window
    for dim, size, kernel, pad, dil in zip(("height", "width"), input_size, kernel_size, padding, dilation):
        span = dil * (kernel - 1) + 1
        if span > size + 2 * pad:
            raise ValueError(
                f"kernel_size {kernel_size} with dilation {dilation} spans {span} along the {dim}, more than the "
                f"input's {size} padded by {pad} on each side"
            )


def _check_input_side(name: str, input: Tensor, window: Window) -> None:
    """The (B, C_in, H, W) tensor the windows are cut from."""
    require_tensor(name, input)
    require_float(name, input)
    _require_dims(name, input, "(B, C_in, H, W)")
    if min(input.shape[1:]) < 1:
        raise ValueError(f"{name} needs at least one channel and a non-empty image, got shape {tuple(input.shape)}")
    _check_window_fits(tuple(input.shape[2:]), window)


def _check_weight(
    weight: object,
    other: Tensor,
    other_name: str,
    kernel_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    in_channels: int | None = None,
    out_channels: int | None = None,
) -> None:
    """weight is (H_out·W_out, C_out, C_in·kh·kw); the other tensor fixes C_in (a layer's
    input) or C_out (a transpose's grad_output), weight itself the remaining one."""
    require_tensor("weight", weight)
    _require_same_dtype("weight", weight, other_name, other)
    require_same_device("weight", weight, other_name, other)
    _require_dims("weight", weight, "(H_out·W_out, C_out, C_in·kh·kw)")
    taps = kernel_size[0] * kernel_size[1]
    if in_channels is not None and weight.shape[2] != in_channels * taps:
        raise ValueError(
            f"weight's last dim must be C_in·kh·kw = {in_channels}·{kernel_size[0]}·{kernel_size[1]} = "
            f"{in_channels * taps} for the {in_channels} channels of {other_name}, got weight of shape "
            f"{tuple(weight.shape)}"
        )
    if weight.shape[2] % taps != 0 or weight.shape[2] == 0:
        raise ValueError(
            f"weight's last dim must be C_in·kh·kw, a positive multiple of kh·kw = {taps}, got weight of shape "
            f"{tuple(weight.shape)}"
        )
    expected = (out_size[0] * out_size[1], weight.shape[1] if out_channels is None else out_channels, weight.shape[2])
    if weight.shape != expected:
        raise ValueError(
            f"weight must be (H_out·W_out, C_out, C_in·kh·kw) = {expected} for the {out_size[0]}x{out_size[1]} "
            f"output grid, got {tuple(weight.shape)}"
        )


def _run(op: str, device: torch.device, *arguments) -> Tensor:
    """The native op ``op`` when ``locallearn._C`` serves ``device`` (float32 on TF32 tensor
    cores where torch's float32 matmul precision allows it), else its reference with autocast
    off (the reference picks its own precision; autocast must not recast its products)."""
    if _native.serves(device):
        return getattr(torch.ops.locallearn, op)(*arguments, device.type == "cuda" and _cuda_matmul_allows_tf32())
    with reference.autocast_off(device):
        return getattr(reference, op)(*arguments)


@torch.compiler.assume_constant_result
def _cuda_matmul_allows_tf32() -> bool:
    """Whether torch lets CUDA float32 matmuls round to TF32: the first setting that is not
    "none" of torch.backends.cuda.matmul.fp32_precision, CUDA's for every op, and
    torch.backends.fp32_precision, as ATen resolves it (set_float32_matmul_precision and
    the legacy allow_tf32 write the first). The native ops take it as an argument because
    LibTorch's stable ABI cannot read it. A compiled graph keeps the value it was traced with."""
    for backend, op in (("cuda", "matmul"), ("cuda", "all"), ("generic", "all")):
        precision = torch._C._get_fp32_precision_getter(backend, op)
        if precision != "none":
            return precision == "tf32"
    return False


if _native.extension is not None:

    @torch.library.register_fake("locallearn::locally_connected2d")
    def _locally_connected2d_fake(input, weight, bias, kernel_size, stride, padding, dilation, allow_tf32=False):
        out_h, out_w = reference.locally_connected_output_size(input.shape[2:], kernel_size, stride, padding, dilation)
        return input.new_empty((input.shape[0], weight.shape[1], out_h, out_w))

    @torch.library.register_fake("locallearn::locally_connected2d_transpose")
    def _locally_connected2d_transpose_fake(grad_output, weight, input_size, kernel_size, stride, padding, dilation,
                                            allow_tf32=False):
        in_channels = weight.shape[2] // (kernel_size[0] * kernel_size[1])
        return grad_output.new_empty((grad_output.shape[0], in_channels, *input_size))

    @torch.library.register_fake("locallearn::locally_connected2d_weight_grad")
    def _locally_connected2d_weight_grad_fake(input, grad_output, kernel_size, stride, padding, dilation,
                                              allow_tf32=False):
        locations = grad_output.shape[2] * grad_output.shape[3]
        patch_size = input.shape[1] * kernel_size[0] * kernel_size[1]
        return input.new_empty((locations, grad_output.shape[1], patch_size))

    # The three ops are bilinear and each one's gradients are the other two:
    # with y = LC(x; W), ⟨y, u⟩ = ⟨x, LCᵀ(u; W)⟩ = ⟨W, weight_grad(x, u)⟩. ctx.settings
    # carries the window and the forward call's allow_tf32, so the gradients round alike.

    def _forward_setup_context(ctx, inputs, output):
        input, weight, bias, *settings = inputs
        ctx.save_for_backward(input, weight)
        ctx.settings = settings
        ctx.has_bias = bias is not None

    def _forward_backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.locallearn.locally_connected2d_transpose(
                grad_output, weight, input.shape[2:], *ctx.settings
            )
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.locallearn.locally_connected2d_weight_grad(input, grad_output, *ctx.settings)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(0)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None

    def _transpose_setup_context(ctx, inputs, output):
        grad_output, weight, _, *settings = inputs
        ctx.save_for_backward(grad_output, weight)
        ctx.settings = settings

    def _transpose_backward(ctx, grad):
        grad_output, weight = ctx.saved_tensors
        grad_grad_output = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_grad_output = torch.ops.locallearn.locally_connected2d(grad, weight, None, *ctx.settings)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.locallearn.locally_connected2d_weight_grad(grad, grad_output, *ctx.settings)
        return grad_grad_output, grad_weight, None, None, None, None, None, None

    def _weight_grad_setup_context(ctx, inputs, output):
        input, grad_output, *settings = inputs
        ctx.save_for_backward(input, grad_output)
        ctx.settings = settings

    def _weight_grad_backward(ctx, grad):
        input, grad_output = ctx.saved_tensors
        grad_input = grad_grad_output = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.locallearn.locally_connected2d_transpose(
                grad_output, grad, input.shape[2:], *ctx.settings
            )
        if ctx.needs_input_grad[1]:
            grad_grad_output = torch.ops.locallearn.locally_connected2d(input, grad, None, *ctx.settings)
        return grad_input, grad_grad_output, None, None, None, None, None

    torch.library.register_autograd(
        "locallearn::locally_connected2d", _forward_backward, setup_context=_forward_setup_context
    )
    torch.library.register_autograd(
        "locallearn::locally_connected2d_transpose", _transpose_backward, setup_context=_transpose_setup_context
    )
    torch.library.register_autograd(
        "locallearn::locally_connected2d_weight_grad", _weight_grad_backward, setup_context=_weight_grad_setup_context
    )
