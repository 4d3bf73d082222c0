"""DTP's difference target op (seed 003 eq. (2)): the reference against the network's own
activations, the native op (C++ CPU, CUDA) against the float64 reference on fresh random
inputs forward and backward, in every dtype and on odd and multi-tile sizes; gradcheck,
opcheck, torch.compile, autocast and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import cuda_param, native_tolerance as tolerance, relative_error, require_native

from locallearn import _native
from locallearn.models.network import ACTIVATIONS, make_activation
from locallearn.ops import DIFFERENCE_TARGET_ACTIVATIONS, difference_target, reference

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = {  # (B, N_below, N_upper)
    "batch 1": (1, 5, 3),
    "batch 2, odd": (2, 7, 9),
    "odd": (13, 17, 29),
    "several 64x64 tiles and depth tiles": (67, 130, 71),
}


@pytest.fixture(params=["cpu", cuda_param("cuda")])
def device(request) -> str:
    return require_native(request.param)


def random_inputs(sizes, generator, dtype=torch.float32, device="cpu") -> list[torch.Tensor]:
    """h_below, t_upper (h_upper plus a step), h_upper, V (Glorot-sized) and c."""
    batch, below, upper = sizes
    h_upper = torch.randn(batch, upper, generator=generator)
    t_upper = h_upper + 0.5 * torch.randn(batch, upper, generator=generator)
    weight = torch.randn(below, upper, generator=generator) * (2 / (below + upper)) ** 0.5
    tensors = [torch.randn(batch, below, generator=generator), t_upper, h_upper, weight,
               0.1 * torch.randn(below, generator=generator)]
    return [t.to(device=device, dtype=dtype) for t in tensors]


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / max(‖expected‖, 1): relative, except that the bias and weight
    gradients, sums of the two halves' terms of opposite sign that may cancel to nothing,
    are held to the inputs' unit scale."""
    return (actual.double().cpu() - expected.cpu()).norm().item() / max(expected.norm().item(), 1.0)


def output_and_grads(function, inputs, activation, grad_output):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    output = function(*leaves, activation)
    return [output.detach(), *torch.autograd.grad(output, leaves, grad_output.to(output.dtype))]


def test_every_network_activation_is_elementwise_and_served(generator):
    """The op's σ by name is the network's module of that name, bit for bit."""
    assert set(DIFFERENCE_TARGET_ACTIVATIONS) == set(ACTIVATIONS)
    x = torch.randn(1000, generator=generator) * 3
    for name in DIFFERENCE_TARGET_ACTIVATIONS:
        assert torch.equal(reference.DIFFERENCE_TARGET_ACTIVATIONS[name](x), make_activation(name)(x)), name


def test_reference_is_eq_2(generator):
    """h_below + g(t) − g(h) with g = σ(V · + c) written out row by row, float64; t = h gives h_below."""
    h_below, t_upper, h_upper, weight, bias = random_inputs((4, 6, 5), generator, torch.float64)
    target = reference.difference_target(h_below, t_upper, h_upper, weight, bias, "tanh")
    for b in range(4):
        expected = h_below[b] + torch.tanh(weight @ t_upper[b] + bias) - torch.tanh(weight @ h_upper[b] + bias)
        torch.testing.assert_close(target[b], expected, rtol=1e-14, atol=1e-14)
    assert torch.equal(reference.difference_target(h_below, h_upper, h_upper, weight, bias, "tanh"), h_below)


@pytest.mark.parametrize("activation", DIFFERENCE_TARGET_ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_native_matches_reference_forward_backward(device, dtype, size, activation, generator):
    """Output and the gradients of all five inputs against the reference evaluated in
    float64 on the same (rounded) input, so that the error measured is the op's alone."""
    inputs = random_inputs(SIZES[size], generator, dtype, device)
    grad_output = torch.randn(inputs[0].shape, generator=generator).to(device)
    actual = output_and_grads(difference_target, inputs, activation, grad_output)
    expected = output_and_grads(reference.difference_target, [t.double() for t in inputs], activation, grad_output)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.dtype == dtype and got.shape == want.shape, index
        assert scaled_error(got, want) < tolerance(device, dtype), index


@pytest.mark.parametrize("activation", DIFFERENCE_TARGET_ACTIVATIONS)
def test_gradcheck_float64(device, activation, generator):
    """The registered backward against finite differences of the native forward."""
    inputs = [t.requires_grad_() for t in random_inputs((3, 4, 5), generator, torch.float64, device)]
    assert torch.autograd.gradcheck(lambda *args: difference_target(*args, activation), inputs)


def test_equal_target_and_activity_give_h_below_exactly(device, generator):
    h_below, _, h_upper, weight, bias = random_inputs(SIZES["odd"], generator, device=device)
    assert torch.equal(difference_target(h_below, h_upper, h_upper, weight, bias, "elu"), h_below)


def test_non_contiguous_inputs(device, generator):
    inputs = random_inputs((9, 11, 6), generator, device=device)
    strided = [t.T.contiguous().T if t.dim() == 2 else t for t in inputs]  # column-major copies
    strided[4] = torch.stack([inputs[4], inputs[4]], dim=1)[:, 0]
    assert not any(t.is_contiguous() for t in strided)
    grad_output = torch.randn(9, 11, generator=generator).to(device)
    actual = output_and_grads(difference_target, strided, "leaky_relu", grad_output)
    expected = output_and_grads(reference.difference_target, [t.double() for t in inputs], "leaky_relu", grad_output)
    for got, want in zip(actual, expected, strict=True):
        assert scaled_error(got, want) < tolerance(device, torch.float32)


def test_empty_sizes(device, generator):
    """No rows or no units below: an empty target; no units above: h_below itself (σ(c) − σ(c))."""
    for sizes in [(0, 4, 3), (3, 0, 3)]:
        h_below, *others = random_inputs(sizes, generator, device=device)
        assert difference_target(h_below, *others, "relu").shape == sizes[:2]
    h_below, *others = random_inputs((3, 4, 0), generator, device=device)
    assert torch.equal(difference_target(h_below, *others, "tanh"), h_below)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(device, dtype, generator):
    inputs = [t.requires_grad_() for t in random_inputs((5, 7, 3), generator, dtype, device)]
    for activation in DIFFERENCE_TARGET_ACTIVATIONS:
        torch.library.opcheck(torch.ops.locallearn.difference_target.default, (*inputs, activation))


def test_torch_compile_matches_eager(device, generator):
    inputs = random_inputs((8, 12, 10), generator, device=device)

    def loss(*tensors):
        return difference_target(*tensors, "tanh").square().sum()

    compiled = torch.compile(loss, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in inputs]
    got = compiled(*leaves)
    got_grads = torch.autograd.grad(got, leaves)
    leaves = [t.clone().requires_grad_() for t in inputs]
    want = loss(*leaves)
    for a, b in zip((got, *got_grads), (want, *torch.autograd.grad(want, leaves)), strict=True):
        assert relative_error(a, b) < 1e-5


@pytest.mark.parametrize("native", [True, False], ids=["native", "reference"])
def test_autocast_does_not_change_the_op(device, native, generator, monkeypatch):
    if not native:
        monkeypatch.setattr(_native, "serves", lambda _device: False)
    inputs = random_inputs((6, 9, 8), generator, device=device)
    grad_output = torch.randn(6, 9, generator=generator).to(device)
    plain = output_and_grads(difference_target, inputs, "relu", grad_output)
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        output = difference_target(*leaves, "relu")
    autocast = [output.detach(), *torch.autograd.grad(output, leaves, grad_output)]
    for expected, got in zip(plain, autocast, strict=True):
        assert got.dtype == torch.float32
        assert relative_error(got, expected) < 1e-5


# ---------------------------------------------------------------- bad input


def bad_inputs():
    """(description, arguments, the name the error must mention)."""
    h_below, t_upper, h_upper, weight, bias = random_inputs((4, 5, 3), torch.Generator().manual_seed(0))
    return [
        ("h_below not a tensor", (h_below.tolist(), t_upper, h_upper, weight, bias, "relu"), "h_below"),
        ("integer h_upper", (h_below, t_upper, h_upper.long(), weight, bias, "relu"), "h_upper"),
        ("float64 weight", (h_below, t_upper, h_upper, weight.double(), bias, "relu"), "weight"),
        ("bias on meta", (h_below, t_upper, h_upper, weight, bias.to("meta"), "relu"), "bias"),
        ("3-d h_below", (h_below[None], t_upper, h_upper, weight, bias, "relu"), "h_below"),
        ("t_upper of another batch", (h_below, t_upper[:3], h_upper[:3], weight, bias, "relu"), "t_upper"),
        ("h_upper of another width", (h_below, t_upper, h_upper[:, :2], weight, bias, "relu"), "h_upper"),
        ("transposed weight", (h_below, t_upper, h_upper, weight.T, bias, "relu"), "weight"),
        ("bias of N_upper", (h_below, t_upper, h_upper, weight, bias[:3], "relu"), "bias"),
        ("softmax", (h_below, t_upper, h_upper, weight, bias, "softmax"), "relu, leaky_relu, tanh, elu"),
    ]


@pytest.mark.parametrize("description, arguments, name", bad_inputs(), ids=[case[0] for case in bad_inputs()])
def test_bad_input_raises_value_error_before_any_kernel(description, arguments, name, monkeypatch):
    def fail(device):
        raise AssertionError("an op was dispatched before the input was rejected")

    monkeypatch.setattr(_native, "serves", fail)
    with pytest.raises(ValueError, match=name):
        difference_target(*arguments)


def test_native_op_checks_its_own_arguments(generator):
    """Past the Python checks a direct torch.ops call raises RuntimeError naming the argument."""
    h_below, t_upper, h_upper, weight, bias = random_inputs((4, 5, 3), generator)
    op = torch.ops.locallearn.difference_target
    with pytest.raises(RuntimeError, match="weight and bias must be"):
        op(h_below, t_upper, h_upper, weight.T, bias, "relu")
    with pytest.raises(RuntimeError, match="bias must have the dtype of h_below"):
        op(h_below, t_upper, h_upper, weight, bias.double(), "relu")
    with pytest.raises(RuntimeError, match="activation must be one of relu, leaky_relu, tanh, elu, got 'gelu'"):
        op(h_below, t_upper, h_upper, weight, bias, "gelu")
