"""DFA's generated projection op: the entries of B_ℓ it generates are the Python generator's
bit for bit (identity rows of the error give B_ℓ's rows), its products agree with e @ B_ℓ
of the stored matrix to float32 rounding in every dtype and on sizes around the CPU
column blocks and the CUDA tiles; opcheck, torch.compile, the fallback and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import cuda_param, native_tolerance, relative_error, require_native

from locallearn import _native
from locallearn.nn import DirectFeedback
from locallearn.ops import direct_feedback, reference

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
MATRICES = [  # seed, layer, K, N: N around the CPU's 256-column blocks and the GPU's 64-column tiles
    (0, 0, 10, 1),
    (7, 2, 11, 1003),
    (-7, 3, 17, 256),
    (2**40 + 5, 1, 1, 257),
    (-(2**63), 4, 1000, 65),
    (2**63 - 1, 2**32 - 1, 3, 64),
]


@pytest.fixture(params=["cpu", cuda_param("cuda")])
def device(request) -> str:
    return require_native(request.param)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed, layer, classes, features", MATRICES)
def test_identity_rows_give_the_generated_matrix_exactly(device, dtype, seed, layer, classes, features):
    """e = I (rows shuffled) gives B_ℓ's rows, bit for bit the generator's float32 values
    (in half precision rounded once to the dtype, as .to() rounds them)."""
    matrix = reference.feedback_columns(seed, layer, classes, 0, features)
    order = torch.randperm(classes, generator=torch.Generator().manual_seed(classes))
    error = torch.eye(classes, dtype=dtype, device=device)[order]
    projected = direct_feedback(error, seed, layer, features)
    assert projected.dtype == dtype and projected.shape == (classes, features)
    assert torch.equal(projected.cpu(), matrix[order].to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, classes, features", [(1, 10, 1), (2, 10, 300), (67, 17, 1003), (5, 1000, 130)])
def test_matches_the_stored_matrix_product(device, dtype, batch, classes, features, generator):
    """Against e @ B_ℓ of the stored matrix, evaluated in float64 on the same (rounded) error."""
    error = torch.randn(batch, classes, generator=generator).to(device=device, dtype=dtype)
    stored = DirectFeedback(classes, [features], seed=3, mode="stored", device=device)
    expected = error.double() @ stored.matrix0.double()
    projected = direct_feedback(error, 3, 0, features)
    assert projected.dtype == dtype and projected.shape == (batch, features)
    assert relative_error(projected, expected) < native_tolerance(device, dtype)
    if dtype == torch.float32:
        assert relative_error(projected, stored(error, 0)) < native_tolerance(device, dtype)


def test_non_contiguous_error(device, generator):
    error = torch.randn(13, 40, generator=generator).to(device).T
    assert not error.is_contiguous()
    expected = error.double() @ reference.feedback_columns(5, 1, 13, 0, 300).double().to(device)
    assert relative_error(direct_feedback(error, 5, 1, 300), expected) < native_tolerance(device, torch.float32)


def test_empty_sizes(device):
    assert direct_feedback(torch.ones(0, 4, device=device), 0, 0, 9).shape == (0, 9)
    assert direct_feedback(torch.ones(3, 4, device=device), 0, 0, 0).shape == (3, 0)


def test_native_agrees_with_the_chunked_fallback(device, generator, monkeypatch):
    error = torch.randn(9, 21, generator=generator).to(device)
    native = direct_feedback(error, 11, 2, 500)
    monkeypatch.setattr(_native, "serves", lambda _device: False)
    fallback = direct_feedback(error, 11, 2, 500, chunk=37)
    assert torch.equal(fallback, reference.direct_feedback(error, 11, 2, 500, chunk=37))
    assert relative_error(native, fallback) < native_tolerance(device, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(device, dtype, generator):
    error = torch.randn(6, 10, generator=generator).to(device=device, dtype=dtype)
    torch.library.opcheck(torch.ops.locallearn.direct_feedback.default, (error, -3, 1, 77))


def test_torch_compile_matches_eager(device, generator):
    error = torch.randn(8, 10, generator=generator).to(device)

    def project(e):
        return direct_feedback(e * 2, 4, 1, 333) + 1

    assert torch.equal(torch.compile(project, fullgraph=True)(error), project(error))


# ---------------------------------------------------------------- bad input

ERROR = torch.ones(4, 10)
BAD_INPUTS = {
    "error requiring grad": ((ERROR.clone().requires_grad_(), 0, 0, 5), "requires grad"),
    "error not a tensor": ((ERROR.tolist(), 0, 0, 5), "error"),
    "integer error": ((ERROR.long(), 0, 0, 5), "error"),
    "1-d error": ((ERROR[0], 0, 0, 5), "error"),
    "no classes": ((ERROR[:, :0], 0, 0, 5), "error"),
    "seed beyond int64": ((ERROR, 2**63, 0, 5), "seed"),
    "float seed": ((ERROR, 1.0, 0, 5), "seed"),
    "negative layer": ((ERROR, 0, -1, 5), "layer"),
    "layer of 2^32": ((ERROR, 0, 2**32, 5), "layer"),
    "negative num_features": ((ERROR, 0, 0, -5), "num_features"),
    "bool num_features": ((ERROR, 0, 0, True), "num_features"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_value_error_before_any_kernel(case, monkeypatch):
    def fail(device):
        raise AssertionError("an op was dispatched before the input was rejected")

    monkeypatch.setattr(_native, "serves", fail)
    arguments, name = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=name):
        direct_feedback(*arguments)


def test_native_op_checks_its_own_arguments():
    op = torch.ops.locallearn.direct_feedback
    with pytest.raises(RuntimeError, match=r"layer must be in \[0, 2\^32\), got -1"):
        op(ERROR, 0, -1, 5)
    with pytest.raises(RuntimeError, match="error must have 1 <= K < 2\\^32 columns"):
        op(ERROR[:, :0], 0, 0, 5)
    with pytest.raises(RuntimeError, match="num_features must be in"):
        op(ERROR, 0, 0, 2**32)
