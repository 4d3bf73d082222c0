"""The native similarity-matching and channel_std ops (C++ CPU, CUDA) against the
reference, forward and backward, on fresh random inputs of odd sizes."""

import pytest
import torch
from helpers import (cuda_param, half_aware_tolerance, native_tolerance as tolerance, opposing_target,
                     random_features, random_labels, relative_error, require_native)

import locallearn
from locallearn import _native
from locallearn.ops import reference
from locallearn.ops.channel_std import channel_std_opmath

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(params=["cpu", cuda_param("cuda")])
def device(request) -> str:
    return require_native(request.param)


def loss_and_grad(fn, features, *args, **kwargs):
    features = features.detach().clone().requires_grad_()
    loss = fn(features, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, features)
    return loss.detach(), grad


def assert_matches_reference(features, labels=None, target=None, num_classes=None):
    """Loss and gradient of the native op against the reference evaluated in float64
    on the same input, so that the error measured is the native op's alone."""
    device, dtype = features.device.type, features.dtype
    loss, grad = loss_and_grad(
        locallearn.similarity_matching_loss, features, labels, target=target, num_classes=num_classes
    )
    oracle_target = None if target is None else target.double()
    expected_loss, expected_grad = loss_and_grad(
        reference.similarity_matching_loss, features.double(), labels, oracle_target, num_classes
    )
    assert loss.dtype == reference.opmath_dtype(dtype) and loss.shape == ()
    assert grad.dtype == dtype and grad.shape == features.shape
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert relative_error(loss, expected_loss) < tolerance(device, dtype)
    assert relative_error(grad, expected_grad) < half_aware_tolerance(expected_grad, dtype, device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, dim", [(2, 1), (16, 9), (37, 129), (130, 1031)])
def test_labels_forward_backward(device, dtype, batch, dim, generator, native_kernels):
    features = random_features((batch, dim), generator, dtype, device)
    assert_matches_reference(features, random_labels(batch, 5, generator, device), num_classes=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, dim", [(2, 5), (3, 7)])
def test_tiny_batches_forward_backward(device, dtype, batch, dim, generator, native_kernels):
    """In half precision the normalised rows are rounded before the Gram product
    (about 2^-9 per similarity); with two or three rows nothing averages that out,
    so half precision is held to its bar from B = 16 on (the other tests)."""
    features = random_features((batch, dim), generator, dtype, device)
    assert_matches_reference(features, target=opposing_target(features))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_few_features_forward_backward(device, dtype, generator, native_kernels):
    """Three columns: centred rows span a plane, so similarities often sit near the
    clamp's edges, which half precision cannot resolve. (With two columns every
    pair of centred rows is parallel and the gradient vanishes identically.)"""
    features = random_features((24, 3), generator, dtype, device)
    assert_matches_reference(features, random_labels(24, 3, generator, device), num_classes=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_target_matrix_forward_backward(device, dtype, generator, native_kernels):
    features = random_features((45, 77), generator, dtype, device)
    projection = random_features((45, 128), generator, torch.float32, device)
    assert_matches_reference(features, target=reference.similarity_matrix(projection))


@pytest.mark.parametrize("dtype", DTYPES)
def test_asymmetric_target_matrix(device, dtype, generator, native_kernels):
    """Any (B, B) target is accepted; the gradient then sees the symmetric part of S − T."""
    features = random_features((33, 20), generator, dtype, device)
    target = (torch.rand(33, 33, generator=generator) * 2 - 1).to(device)
    assert_matches_reference(features, target=target)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 16, 5, 3), (17, 3, 4, 4), (16, 9, 1, 1), (18, 7, 1, 9)])
def test_activations_forward_backward(device, dtype, shape, generator, native_kernels):
    features = random_features(shape, generator, dtype, device)
    assert_matches_reference(features, random_labels(shape[0], 4, generator, device), num_classes=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activations_tiny_batch_forward_backward(device, dtype, generator, native_kernels):
    features = random_features((2, 7, 1, 9), generator, dtype, device)
    assert_matches_reference(features, target=opposing_target(features.flatten(2).std(dim=2)))


def test_non_contiguous_inputs(device, generator, native_kernels):
    transposed = random_features((40, 23), generator, device=device).t()
    assert not transposed.is_contiguous()
    assert_matches_reference(transposed, random_labels(23, 3, generator, device), num_classes=3)
    strided = random_features((12, 16, 6, 6), generator, device=device)[:, ::2, 1:, ::2]
    assert not strided.is_contiguous()
    assert_matches_reference(strided, random_labels(12, 3, generator, device), num_classes=3)
    labels = random_labels(24, 3, generator, device)[::2]
    target = reference.label_similarity_matrix(labels, 3).t()
    assert_matches_reference(random_features((12, 30), generator, device=device), target=target)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dead_rows_and_channels_stay_finite(device, dtype, generator, native_kernels):
    features = random_features((8, 33), generator, dtype, device).relu()
    features[2] = 0
    features[5] = 0
    labels = random_labels(8, 3, generator, device)
    if dtype in (torch.float32, torch.float64):
        assert_matches_reference(features, labels, num_classes=3)
    loss, grad = loss_and_grad(locallearn.similarity_matching_loss, features, labels, num_classes=3)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()

    activations = random_features((4, 6, 3, 3), generator, dtype, device).relu()
    activations[1, 2] = 0  # a dead channel: zero std and zero std-gradient
    activations[3] = 0  # a dead example: a zero row after the reduction
    loss, grad = loss_and_grad(locallearn.similarity_matching_loss, activations, labels[:4], num_classes=3)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[1, 2].abs().max().item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_std_forward_backward(device, dtype, generator, native_kernels):
    """The op's float32 (opmath) result and its gradient, against float64."""
    x = random_features((5, 7, 3, 5), generator, dtype, device)
    weights = torch.rand(5, 7, generator=generator, dtype=torch.float64).add(0.5).to(device)  # positive: no cancellation
    actual, actual_grad = loss_and_grad(lambda t: (channel_std_opmath(t).double() * weights).sum(), x)
    expected, expected_grad = loss_and_grad(lambda t: (reference.channel_std(t) * weights).sum(), x.double())
    bound = tolerance(device, dtype)
    assert channel_std_opmath(x).dtype == reference.opmath_dtype(dtype)
    assert locallearn.channel_std(x).dtype == dtype
    assert relative_error(actual, expected) < bound
    assert relative_error(actual_grad, expected_grad) < half_aware_tolerance(expected_grad, dtype, device)


def test_opcheck(device, generator):
    features = random_features((9, 13), generator, device=device)
    labels = random_labels(9, 4, generator, device)
    target = reference.similarity_matrix(random_features((9, 5), generator, device=device))
    activations = random_features((3, 5, 4, 2), generator, device=device)
    for args in [(features, labels, None, 4), (features, None, target, 0), (features.double(), labels, None, 4)]:
        torch.library.opcheck(torch.ops.locallearn.similarity_matching_loss.default, (args[0].requires_grad_(),) + args[1:])
    torch.library.opcheck(torch.ops.locallearn.channel_std.default, (activations.requires_grad_(),))


def test_torch_compile_matches_eager(device, generator):
    features = random_features((32, 48), generator, device=device)
    activations = random_features((32, 8, 4, 4), generator, device=device)
    labels = random_labels(32, 6, generator, device)

    def step(h, a, y):
        return locallearn.similarity_matching_loss(h, y, num_classes=6) + locallearn.similarity_matching_loss(
            a.relu(), y, num_classes=6
        )

    compiled = torch.compile(step, fullgraph=True)
    h, a = features.clone().requires_grad_(), activations.clone().requires_grad_()
    loss = compiled(h, a, labels)
    loss.backward()
    h_eager, a_eager = features.clone().requires_grad_(), activations.clone().requires_grad_()
    expected = step(h_eager, a_eager, labels)
    expected.backward()
    assert relative_error(loss, expected) < 1e-5
    assert relative_error(h.grad, h_eager.grad) < 1e-5
    assert relative_error(a.grad, a_eager.grad) < 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("batch, dim", [(8192, 96), (2, 65536), (1000, 4096)])
def test_cuda_extreme_shapes(batch, dim, generator, native_kernels):
    require_native("cuda")
    features = random_features((batch, dim), generator, torch.bfloat16, "cuda")
    assert_matches_reference(features, random_labels(batch, 10, generator, "cuda"), num_classes=10)


@pytest.mark.parametrize("native", [True, False], ids=["native", "reference"])
def test_autocast_does_not_change_the_op(device, native, generator, monkeypatch, request):
    """Inside torch.autocast the op keeps its own precision: the same loss and gradient
    as outside it (autocast once recast the native op's Gram matrix and broke it)."""
    if native:
        request.getfixturevalue("native_kernels")
    else:
        monkeypatch.setattr(_native, "serves", lambda _device: False)
    features = random_features((37, 23), generator, torch.float32, device)
    labels = random_labels(37, 5, generator, device)
    plain = loss_and_grad(locallearn.similarity_matching_loss, features, labels, num_classes=5)
    features.requires_grad_()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss = locallearn.similarity_matching_loss(features, labels, num_classes=5)
    (grad,) = torch.autograd.grad(loss, features)  # backward outside autocast, as PyTorch recommends
    for expected, got in zip(plain, (loss, grad)):
        assert got.dtype == expected.dtype
        assert relative_error(got, expected) < tolerance(device, torch.float32)
