"""The locally-connected 2-d ops: the reference against conv2d with tied weights and the
adjoint identity; the native ops (C++ CPU, CUDA) against the reference on fresh random
inputs; gradients, opcheck, autocast and bad input."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from helpers import cuda_param, native_tolerance, relative_error, require_native

from locallearn import _native
from locallearn.ops import (
    locally_connected,
    locally_connected2d,
    locally_connected2d_transpose,
    locally_connected2d_weight_grad,
    locally_connected_output_size,
    reference,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


class Geometry(NamedTuple):
    batch: int
    in_channels: int
    out_channels: int
    input_size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def window(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.dilation

    @property
    def window_kwargs(self) -> dict:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def output_size(self) -> tuple[int, int]:
        return reference.locally_connected_output_size(self.input_size, *self.window)

    @property
    def patch_size(self) -> int:
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]


GEOMETRIES = {
    "3x3": Geometry(2, 3, 4, (8, 8), (3, 3)),
    "odd sizes, stride 2x1, padding 1x0, 3x2 kernel": Geometry(3, 2, 5, (9, 7), (3, 2), (2, 1), (1, 0)),
    "dilation 2, padding 2, stride 2": Geometry(2, 3, 2, (11, 10), (3, 3), (2, 2), (2, 2), (2, 2)),
    "batch 1, 2x3 kernel, mixed dilation": Geometry(1, 4, 3, (5, 6), (2, 3), (1, 2), (0, 1), (2, 1)),
    "1x1 kernel, stride 3": Geometry(2, 1, 3, (7, 7), (1, 1), (3, 3)),
    "one location": Geometry(2, 2, 2, (4, 5), (4, 5)),
    "ImageNet layer 1 in miniature": Geometry(2, 3, 6, (29, 31), (9, 9), (4, 4), (4, 4)),
}
IMAGENET_LAYER1 = Geometry(2, 3, 48, (224, 224), (9, 9), (4, 4), (4, 4))
"""Seed 003 Table 3, ImageNet LC layer 1 (48 channels), at batch 2."""


def random_tensors(geometry: Geometry, generator, dtype=torch.float32, device="cpu"):
    """input, weight, bias and an output-shaped cotangent, each of unit-order entries."""
    out_h, out_w = geometry.output_size
    shapes = [
        (geometry.batch, geometry.in_channels, *geometry.input_size),
        (out_h * out_w, geometry.out_channels, geometry.patch_size),
        (geometry.out_channels, out_h, out_w),
        (geometry.batch, geometry.out_channels, out_h, out_w),
    ]
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    tensors[1] /= math.sqrt(geometry.patch_size)
    return [t.to(device=device, dtype=dtype) for t in tensors]


def tolerance(dtype: torch.dtype) -> float:
    """float64 1e-10, float32 1e-4 (a longer reduction than the similarity ops', and TF32 off
    on GPUs); float16 and bfloat16 two of their own epsilons (helpers.native_tolerance)."""
    return {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype) or native_tolerance("cpu", dtype)


@pytest.fixture(params=["cpu", cuda_param("cuda")])
def device(request) -> str:
    return require_native(request.param)


@pytest.fixture(params=["native", "reference"])
def implementation(request, monkeypatch) -> str:
    """Runs the public ops on the native op (which must run: conftest.native_kernels) or,
    with serves() patched, on the reference."""
    if request.param == "reference":
        monkeypatch.setattr(_native, "serves", lambda _device: False)
    else:
        require_native("cpu")
        request.getfixturevalue("native_kernels")
    return request.param


@pytest.fixture
def full_fp32_matmul():
    """fp32 products in full fp32 (no TF32 on CUDA), for the 1e-4 bar."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


# ---- the reference -----------------------------------------------------------


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES)
def test_reference_with_tied_weights_is_conv2d(geometry, generator):
    """With one kernel shared by every location the layer is conv2d, its transpose
    conv2d's input gradient, and its weight gradient summed over locations conv2d's."""
    x, _, _, grad_output = random_tensors(geometry, generator, torch.float64)
    out_h, out_w = geometry.output_size
    kh, kw = geometry.kernel_size
    kernel = torch.randn(geometry.out_channels, geometry.in_channels, kh, kw, generator=generator, dtype=torch.float64)
    conv_bias = torch.randn(geometry.out_channels, generator=generator, dtype=torch.float64)
    tied = kernel.reshape(1, geometry.out_channels, -1).expand(out_h * out_w, -1, -1)
    bias = conv_bias[:, None, None].expand(-1, out_h, out_w)
    conv = dict(stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation)

    expected = F.conv2d(x, kernel, conv_bias, **conv)
    assert relative_error(reference.locally_connected2d(x, tied, bias, *geometry.window), expected) < 1e-12
    expected_input_grad = torch.nn.grad.conv2d_input(x.shape, kernel, grad_output, **conv)
    transposed = reference.locally_connected2d_transpose(grad_output, tied, geometry.input_size, *geometry.window)
    assert relative_error(transposed, expected_input_grad) < 1e-12
    expected_weight_grad = torch.nn.grad.conv2d_weight(x, kernel.shape, grad_output, **conv)
    weight_grad = reference.locally_connected2d_weight_grad(x, grad_output, *geometry.window)
    assert relative_error(weight_grad.sum(0).view_as(kernel), expected_weight_grad) < 1e-12


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES)
def test_adjoint_identity(geometry, implementation, generator):
    """⟨LC(x; W), y⟩ = ⟨x, LCᵀ(y; W)⟩ = ⟨W, weight_grad(x, y)⟩ in float64."""
    x, weight, _, y = random_tensors(geometry, generator, torch.float64)
    forward = (locally_connected2d(x, weight, **geometry.window_kwargs) * y).sum()
    transposed = (x * locally_connected2d_transpose(y, weight, geometry.input_size, **geometry.window_kwargs)).sum()
    weight_grad = (weight * locally_connected2d_weight_grad(x, y, **geometry.window_kwargs)).sum()
    assert abs(forward - transposed) < 1e-10 * abs(forward)
    assert abs(forward - weight_grad) < 1e-10 * abs(forward)


@pytest.mark.parametrize(
    "geometry",
    [Geometry(2, 2, 3, (5, 4), (3, 2), (2, 1), (1, 1)), Geometry(1, 1, 2, (6, 5), (2, 2), (1, 2), (0, 1), (2, 1))],
    ids=["stride 2x1, padding 1", "batch 1, dilation 2x1"],
)
def test_gradcheck(geometry, implementation, generator):
    """First and second derivatives of the three public ops in float64."""
    x, weight, bias, y = (t.requires_grad_() for t in random_tensors(geometry, generator, torch.float64))
    window = geometry.window_kwargs

    def forward(x, weight, bias):
        return locally_connected2d(x, weight, bias, **window)

    def transpose(y, weight):
        return locally_connected2d_transpose(y, weight, geometry.input_size, **window)

    def weight_grad(x, y):
        return locally_connected2d_weight_grad(x, y, **window)

    for function, inputs in [(forward, (x, weight, bias)), (transpose, (y, weight)), (weight_grad, (x, y))]:
        assert torch.autograd.gradcheck(function, inputs)
        assert torch.autograd.gradgradcheck(function, inputs)


# ---- the native ops against the reference ------------------------------------


def assert_native_matches_reference(geometry, x, weight, bias, grad_output):
    """The three native ops against the reference evaluated in float64 on the same
    (rounded) input, so that the error measured is the native op's alone."""
    window = geometry.window
    bound = tolerance(x.dtype)
    expected = reference.locally_connected2d(x.double(), weight.double(), bias.double(), *window)
    output = torch.ops.locallearn.locally_connected2d(x, weight, bias, *window)
    assert output.dtype == x.dtype and output.shape == expected.shape
    assert relative_error(output, expected) < bound

    expected = reference.locally_connected2d_transpose(
        grad_output.double(), weight.double(), geometry.input_size, *window
    )
    grad_input = torch.ops.locallearn.locally_connected2d_transpose(grad_output, weight, geometry.input_size, *window)
    assert grad_input.dtype == x.dtype and grad_input.shape == x.shape
    assert relative_error(grad_input, expected) < bound

    expected = reference.locally_connected2d_weight_grad(x.double(), grad_output.double(), *window)
    grad_weight = torch.ops.locallearn.locally_connected2d_weight_grad(x, grad_output, *window)
    assert grad_weight.dtype == x.dtype and grad_weight.shape == weight.shape
    assert relative_error(grad_weight, expected) < bound


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES)
def test_native_matches_reference(device, dtype, geometry, generator, full_fp32_matmul):
    assert_native_matches_reference(geometry, *random_tensors(geometry, generator, dtype, device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_non_contiguous_inputs(device, dtype, generator, full_fp32_matmul):
    geometry = GEOMETRIES["odd sizes, stride 2x1, padding 1x0, 3x2 kernel"]
    x, weight, bias, grad_output = random_tensors(geometry, generator, dtype, device)
    strided_x = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=dtype, device=device)[..., ::2]
    strided_x.copy_(x)
    non_contiguous = [
        strided_x,
        weight.transpose(0, 1).contiguous().transpose(0, 1),
        bias.transpose(1, 2).contiguous().transpose(1, 2),
        grad_output.contiguous(memory_format=torch.channels_last),
    ]
    assert not any(t.is_contiguous() for t in non_contiguous)
    assert_native_matches_reference(geometry, *non_contiguous)


@pytest.mark.parametrize("threads", [2, 3])
def test_native_cpu_worker_threads(threads, generator, native_kernels):
    """With several threads the transpose splits batch rows and input channels into
    uneven blocks, and the worker threads, which inherit no autograd state, compute
    for inputs that require grad."""
    require_native("cpu")
    geometry = GEOMETRIES["ImageNet layer 1 in miniature"]
    x, weight, bias, grad_output = random_tensors(geometry, generator)
    parameters = [t.requires_grad_() for t in (x, weight, bias)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        output = locally_connected2d(x, weight, bias, **geometry.window_kwargs)
        grads = torch.autograd.grad(output, parameters, grad_output)
    finally:
        torch.set_num_threads(previous)
    expected = reference.locally_connected2d(*(t.double() for t in parameters), *geometry.window)
    expected_grads = torch.autograd.grad(expected, parameters, grad_output.double())
    for got, want in zip((output, *grads), (expected, *expected_grads)):
        assert relative_error(got, want) < tolerance(torch.float32)


def test_native_empty_batch_and_channels(device):
    geometry = GEOMETRIES["3x3"]
    window, (out_h, out_w) = geometry.window, geometry.output_size
    ops = torch.ops.locallearn
    no_examples = torch.ones(0, 3, 8, 8, device=device)
    weight = torch.ones(out_h * out_w, 4, 27, device=device)
    assert ops.locally_connected2d(no_examples, weight, None, *window).shape == (0, 4, out_h, out_w)
    no_grads = torch.ones(0, 4, out_h, out_w, device=device)
    grad_weight = ops.locally_connected2d_weight_grad(no_examples, no_grads, *window)
    assert grad_weight.shape == weight.shape and not grad_weight.any()
    no_outputs = torch.ones(2, 0, out_h, out_w, device=device)
    grad_input = ops.locally_connected2d_transpose(no_outputs, weight[:, :0], (8, 8), *window)
    assert grad_input.shape == (2, 3, 8, 8) and not grad_input.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(device, dtype, generator):
    geometry = GEOMETRIES["odd sizes, stride 2x1, padding 1x0, 3x2 kernel"]
    x, weight, bias, grad_output = (t.requires_grad_() for t in random_tensors(geometry, generator, dtype, device))
    window = [list(pair) for pair in geometry.window]
    ops = torch.ops.locallearn
    cases = [
        (ops.locally_connected2d.default, (x, weight, bias, *window)),
        (ops.locally_connected2d.default, (x, weight, None, *window)),
        (ops.locally_connected2d_transpose.default, (grad_output, weight, list(geometry.input_size), *window)),
        (ops.locally_connected2d_weight_grad.default, (x, grad_output, *window)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_matches_eager(device, generator):
    """The three ops in one compiled graph (fullgraph: no break at a locallearn op): the
    forward, and the backward through transpose and weight_grad, as eager. (Not counted by
    native_kernels: dynamo compiles nothing under a dispatch mode.)"""
    geometry = GEOMETRIES["odd sizes, stride 2x1, padding 1x0, 3x2 kernel"]
    x, weight, bias, grad_output = random_tensors(geometry, generator, device=device)

    def step(x, weight, bias):
        return (locally_connected2d(x, weight, bias, **geometry.window_kwargs).relu() * grad_output).sum()

    compiled = torch.compile(step, fullgraph=True)
    results = []
    for function in (compiled, step):
        parameters = [t.clone().requires_grad_() for t in (x, weight, bias)]
        loss = function(*parameters)
        results.append((loss, *torch.autograd.grad(loss, parameters)))
    for got, expected in zip(*results):
        assert relative_error(got, expected) < 1e-5


@pytest.mark.parametrize("implementation_name", ["native", "reference"])
def test_autocast_does_not_change_the_op(device, implementation_name, generator, monkeypatch, request):
    """Inside torch.autocast the op keeps the precision of its input: the same output
    and gradients as outside it."""
    if implementation_name == "reference":
        monkeypatch.setattr(_native, "serves", lambda _device: False)
    else:
        request.getfixturevalue("native_kernels")
    geometry = GEOMETRIES["3x3"]
    x, weight, bias, grad_output = random_tensors(geometry, generator, device=device)
    parameters = [t.requires_grad_() for t in (x, weight, bias)]

    def output_and_grads(output):
        return (output, *torch.autograd.grad(output, parameters, grad_output))

    plain = output_and_grads(locally_connected2d(x, weight, bias, **geometry.window_kwargs))
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        output = locally_connected2d(x, weight, bias, **geometry.window_kwargs)
    autocast = output_and_grads(output)  # backward outside autocast, as PyTorch recommends
    for expected, got in zip(plain, autocast):
        assert got.dtype == torch.float32
        assert relative_error(got, expected) < 1e-5


def test_public_ops_take_ints_or_pairs(generator):
    geometry = Geometry(2, 2, 3, (7, 7), (3, 3), (2, 2), (1, 1), (1, 1))
    x, weight, bias, grad_output = random_tensors(geometry, generator)
    assert locally_connected_output_size(7, 3, 2, 1) == locally_connected_output_size((7, 7), (3, 3), (2, 2), (1, 1))
    as_ints = dict(kernel_size=3, stride=2, padding=1, dilation=1)
    assert torch.equal(
        locally_connected2d(x, weight, bias, **as_ints), locally_connected2d(x, weight, bias, **geometry.window_kwargs)
    )
    assert torch.equal(
        locally_connected2d_transpose(grad_output, weight, 7, **as_ints),
        locally_connected2d_transpose(grad_output, weight, (7, 7), **geometry.window_kwargs),
    )


# ---- CUDA at scale -----------------------------------------------------------


TILED_GEOMETRIES = {
    "ImageNet layer 1 at batch 256": IMAGENET_LAYER1._replace(batch=256),
    "C_out 96, batch 130, K 200": Geometry(130, 8, 96, (20, 20), (5, 5), (2, 2), (2, 2)),
}
"""Sizes past one 64 x 64 output tile in every GEMM dimension (batch rows, C_out, the
patch K), with remainders, so that second and partial tiles and reduction steps occur."""


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_imagenet_layer1(dtype, generator, full_fp32_matmul):
    require_native("cuda")
    assert IMAGENET_LAYER1.output_size == (56, 56)
    assert_native_matches_reference(IMAGENET_LAYER1, *random_tensors(IMAGENET_LAYER1, generator, dtype, "cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("geometry", TILED_GEOMETRIES.values(), ids=TILED_GEOMETRIES)
def test_cuda_many_tiles(dtype, geometry, generator, full_fp32_matmul):
    require_native("cuda")
    assert_native_matches_reference(geometry, *random_tensors(geometry, generator, dtype, "cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("geometry", [GEOMETRIES["odd sizes, stride 2x1, padding 1x0, 3x2 kernel"],
                                      TILED_GEOMETRIES["C_out 96, batch 130, K 200"]], ids=["odd", "tiled"])
def test_cuda_simt_kernels(dtype, geometry, generator, tf32_matmul):
    """With tensor cores switched off, every dtype runs the SIMT kernels: half precision,
    which takes the tensor-core path on sm_70+/sm_80+ otherwise, matches the reference,
    and float32 is true fp32 although TF32 is allowed."""
    require_native("cuda")
    tensors = random_tensors(geometry, generator, dtype, "cuda")
    with locally_connected.tensor_cores(False):
        assert not _native.extension.tensor_cores_enabled()
        assert_native_matches_reference(geometry, *tensors)
    assert _native.extension.tensor_cores_enabled()


def test_tensor_core_switch_is_scoped():
    """The switch needs no GPU: in a CUDA build it is off inside the block and restored
    after it, an exception included; a build without CUDA refuses it by name."""
    extension = _native.extension
    if extension is None or not extension.with_cuda:
        with pytest.raises(RuntimeError, match="built with CUDA"):
            with locally_connected.tensor_cores(False):
                pass
        return
    assert extension.tensor_cores_enabled()
    with pytest.raises(KeyError):
        with locally_connected.tensor_cores(False):
            assert not extension.tensor_cores_enabled()
            raise KeyError("inside the block")
    assert extension.tensor_cores_enabled()


@pytest.fixture(params=["fp32_precision", "set_float32_matmul_precision"])
def tf32_matmul(request):
    """float32 products allowed to round to TF32, through the precision API of torch 2.9+
    or the older set_float32_matmul_precision (torch must honour both)."""
    if request.param == "fp32_precision":
        previous = torch.backends.cuda.matmul.fp32_precision
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        yield
        torch.backends.cuda.matmul.fp32_precision = previous
    else:
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        yield
        torch.set_float32_matmul_precision(previous)


def test_tf32_permission_follows_torch(tf32_matmul):
    """The allow_tf32 argument the wrappers pass is torch's resolved CUDA float32 matmul
    precision: TF32 under either API, and true fp32 by default, when the matmul setting says
    ieee, and when only the generic setting says tf32 but the matmul one overrides it."""
    assert locally_connected._cuda_matmul_allows_tf32()
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        assert not locally_connected._cuda_matmul_allows_tf32()
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


def test_tf32_permission_falls_back_to_the_generic_setting():
    """With the matmul setting "none", ATen reads the generic one (set_float32_matmul_precision
    leaves "ieee" behind, so the test sets both)."""
    previous = torch.backends.cuda.matmul.fp32_precision, torch.backends.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.backends.fp32_precision = "none"
        assert not locally_connected._cuda_matmul_allows_tf32()
        torch.backends.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "none"
        assert locally_connected._cuda_matmul_allows_tf32()
    finally:
        torch.backends.fp32_precision = previous[1]
        torch.backends.cuda.matmul.fp32_precision = previous[0]


def test_tf32_permission_is_read_inside_a_compiled_graph_without_a_break(tf32_matmul):
    """A compiled CUDA model reads the permission while tracing: it must not break the
    graph (it is a constant of the trace, assume_constant_result)."""
    compiled = torch.compile(lambda x: x * 2 if locally_connected._cuda_matmul_allows_tf32() else x,
                             fullgraph=True, backend="eager")
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))


@pytest.mark.cuda
@pytest.mark.parametrize("geometry", [GEOMETRIES["ImageNet layer 1 in miniature"],
                                      TILED_GEOMETRIES["C_out 96, batch 130, K 200"]], ids=["miniature", "tiled"])
def test_cuda_tf32_tensor_cores(geometry, generator, tf32_matmul):
    """Where torch allows TF32 for float32 matmuls (the public functions read it and pass
    it to the native ops as allow_tf32), the three ops run on TF32
    tensor cores (sm_80+): within TF32's rounding of the float64 result, and measurably
    off it, where the SIMT kernels (tensor cores switched off) give true fp32."""
    require_native("cuda")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("TF32 tensor cores need a CUDA device of sm_80 or newer")
    x, weight, bias, grad_output = random_tensors(geometry, generator, torch.float32, "cuda")
    window = geometry.window
    keywords = dict(zip(("kernel_size", "stride", "padding", "dilation"), window))
    calls = {
        "forward": (lambda: locally_connected.locally_connected2d(x, weight, bias, **keywords),
                    lambda: reference.locally_connected2d(x.double(), weight.double(), bias.double(), *window)),
        "transpose": (lambda: locally_connected.locally_connected2d_transpose(grad_output, weight,
                                                                              geometry.input_size, **keywords),
                      lambda: reference.locally_connected2d_transpose(grad_output.double(), weight.double(),
                                                                      geometry.input_size, *window)),
        "weight_grad": (lambda: locally_connected.locally_connected2d_weight_grad(x, grad_output, **keywords),
                        lambda: reference.locally_connected2d_weight_grad(x.double(), grad_output.double(), *window)),
    }
    for name, (native, exact) in calls.items():
        expected = exact()
        tf32 = native()
        with locally_connected.tensor_cores(False):
            fp32 = native()
        assert relative_error(fp32, expected) < 1e-5, name
        assert 1e-5 < relative_error(tf32, expected) < 5e-3, name  # TF32 keeps 10 mantissa bits: ~1e-3


# ---- bad input ---------------------------------------------------------------


def _tensors(geometry=GEOMETRIES["3x3"]):
    return random_tensors(geometry, torch.Generator().manual_seed(0))


def _forward_case(change):
    """locally_connected2d arguments of the 3x3 geometry with one of them changed."""

    def make():
        x, weight, bias, _ = _tensors()
        args = dict(input=x, weight=weight, bias=bias, kernel_size=3, stride=1, padding=0, dilation=1)
        args.update(change(args))
        return args

    return make


FORWARD_CASES = {
    "list input": (_forward_case(lambda a: {"input": a["input"].tolist()}), "input"),
    "integer input": (_forward_case(lambda a: {"input": a["input"].long()}), "input"),
    "float64 weight for float32 input": (_forward_case(lambda a: {"weight": a["weight"].double()}), "weight"),
    "weight on another device": (_forward_case(lambda a: {"weight": a["weight"].to("meta")}), "weight"),
    "3-d input": (_forward_case(lambda a: {"input": a["input"][0]}), "input"),
    "input without channels": (_forward_case(lambda a: {"input": a["input"][:, :0]}), "input"),
    "2-d weight": (_forward_case(lambda a: {"weight": a["weight"][0]}), "weight"),
    "weight for other channels": (_forward_case(lambda a: {"input": a["input"][:, :2]}), "C_in"),
    "weight for another grid": (_forward_case(lambda a: {"weight": a["weight"][1:], "bias": None}), "H_out"),
    "kernel larger than padded input": (_forward_case(lambda a: {"kernel_size": 11, "padding": 1}), "kernel_size"),
    "zero stride": (_forward_case(lambda a: {"stride": 0}), "stride"),
    "negative padding": (_forward_case(lambda a: {"padding": (0, -1)}), "padding"),
    "zero dilation": (_forward_case(lambda a: {"dilation": (0, 1)}), "dilation"),
    "three kernel sizes": (_forward_case(lambda a: {"kernel_size": (3, 3, 3)}), "kernel_size"),
    "float kernel size": (_forward_case(lambda a: {"kernel_size": 3.0}), "kernel_size"),
    "bias of wrong shape": (_forward_case(lambda a: {"bias": a["bias"][..., 1:]}), "bias"),
    "float64 bias": (_forward_case(lambda a: {"bias": a["bias"].double()}), "bias"),
    "list bias": (_forward_case(lambda a: {"bias": a["bias"].tolist()}), "bias"),
}


@pytest.fixture
def no_op_may_run(monkeypatch):
    """Validation must finish before the dispatch decision, so no kernel can have run."""

    def fail(device):
        raise AssertionError("an op was dispatched before the input was rejected")

    monkeypatch.setattr(_native, "serves", fail)


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_rejects(case, no_op_may_run):
    make_args, argument = FORWARD_CASES[case]
    with pytest.raises(ValueError, match=argument):
        locally_connected2d(**make_args())


def test_transpose_and_weight_grad_reject(no_op_may_run):
    x, weight, _, grad_output = _tensors()
    window = dict(kernel_size=3)
    cases = [
        (lambda: locally_connected2d_transpose(grad_output.tolist(), weight, 8, **window), "grad_output"),
        (lambda: locally_connected2d_transpose(grad_output.int(), weight, 8, **window), "grad_output"),
        (lambda: locally_connected2d_transpose(grad_output[0], weight, 8, **window), "grad_output"),
        (lambda: locally_connected2d_transpose(grad_output, weight, 9, **window), "grad_output"),
        (lambda: locally_connected2d_transpose(grad_output, weight, 0, **window), "input_size"),
        (lambda: locally_connected2d_transpose(grad_output, weight.half(), 8, **window), "weight"),
        (lambda: locally_connected2d_transpose(grad_output, weight[..., 1:], 8, **window), "weight"),
        (lambda: locally_connected2d_transpose(grad_output, weight[:, 1:], 8, **window), "weight"),
        (lambda: locally_connected2d_transpose(grad_output, weight, 8, kernel_size=9), "kernel_size"),
        (lambda: locally_connected2d_weight_grad(x, grad_output[1:], **window), "grad_output"),
        (lambda: locally_connected2d_weight_grad(x, grad_output.double(), **window), "grad_output"),
        (lambda: locally_connected2d_weight_grad(x, grad_output.to("meta"), **window), "grad_output"),
        (lambda: locally_connected2d_weight_grad(x[:, :, 1:], grad_output, **window), "grad_output"),
        (lambda: locally_connected2d_weight_grad(x, grad_output, kernel_size=3, stride=-1), "stride"),
    ]
    for call, argument in cases:
        with pytest.raises(ValueError, match=argument):
            call()


@pytest.mark.parametrize("arguments, message", [
    (((2, 2), 5), "more than the input"),  # a window larger than the padded input: no output position
    (((8, 8), 3, 1, 0, 4), "more than the input"),  # dilation 4 spreads the 3×3 window over 9 pixels
    (((8,), 3), "input_size"),
    (((8, 0), 3), "input_size"),
    (((8, 8), 3, 0), "stride"),
    (((8, 8), 3, 1, -1), "padding"),
    (((8, 8), 3, 1, 0, 0), "dilation"),
])
def test_output_size_rejects(arguments, message):
    with pytest.raises(ValueError, match=message):
        locally_connected_output_size(*arguments)


def test_native_ops_check_their_own_arguments():
    """Calling torch.ops directly, past the Python checks, still gets an error naming the argument
    (RuntimeError: the stable ABI raises no ValueError from C++; the Python API raises ValueError)."""
    require_native("cpu")
    x, weight, bias, grad_output = _tensors()
    window = ([3, 3], [1, 1], [0, 0], [1, 1])
    ops = torch.ops.locallearn
    cases = [
        (lambda: ops.locally_connected2d(x[0], weight, bias, *window), "input"),
        (lambda: ops.locally_connected2d(x, weight.double(), bias, *window), "weight"),
        (lambda: ops.locally_connected2d(x, weight[1:], None, *window), "weight"),
        (lambda: ops.locally_connected2d(x, weight, bias[1:], *window), "bias"),
        (lambda: ops.locally_connected2d(x, weight, bias, [3, 3], [0, 1], [0, 0], [1, 1]), "stride"),
        (lambda: ops.locally_connected2d(x, weight, bias, [9, 3], [1, 1], [0, 0], [1, 1]), "does not fit"),
        (lambda: ops.locally_connected2d_transpose(grad_output, weight, [9, 9], *window), "grad_output"),
        (lambda: ops.locally_connected2d_transpose(grad_output, weight[..., 1:], [8, 8], *window), "weight"),
        (lambda: ops.locally_connected2d_weight_grad(x, grad_output[1:], *window), "grad_output"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
