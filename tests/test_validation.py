"""Bad input to the Python API raises ValueError naming the argument, before any op runs; a direct
torch.ops call raises RuntimeError naming it (NATIVE_ARGUMENT_ERROR)."""

import pytest
import torch
from helpers import random_features

import locallearn
from locallearn import _native


@pytest.fixture(autouse=True)
def no_op_may_run(monkeypatch):
    """Validation must finish before the dispatch decision, so no kernel can have run."""

    def fail(device):
        raise AssertionError("an op was dispatched before the input was rejected")

    monkeypatch.setattr(_native, "serves", fail)


def features(batch=6, dim=5):
    return random_features((batch, dim), torch.Generator().manual_seed(0))


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])

CASES = {
    "batch of one": (lambda: (features(1), torch.tensor([0])), {"num_classes": 3}, "features"),
    "empty batch": (lambda: (features(0), torch.zeros(0, dtype=torch.long)), {"num_classes": 3}, "features"),
    "no columns": (lambda: (features(6, 0), LABELS), {"num_classes": 3}, "features"),
    "1-d features": (lambda: (torch.randn(6), LABELS), {"num_classes": 3}, "features"),
    "3-d features": (lambda: (torch.randn(6, 2, 3), LABELS), {"num_classes": 3}, "features"),
    "5-d features": (lambda: (torch.randn(6, 2, 3, 3, 3), LABELS), {"num_classes": 3}, "features"),
    "integer features": (lambda: (torch.ones(6, 5, dtype=torch.int64), LABELS), {"num_classes": 3}, "features"),
    "bool features": (lambda: (torch.ones(6, 5, dtype=torch.bool), LABELS), {"num_classes": 3}, "features"),
    "list features": (lambda: ([[0.0] * 5] * 6, LABELS), {"num_classes": 3}, "features"),
    "NaN features": (lambda: (features().index_fill(0, torch.tensor([2]), float("nan")), LABELS), {"num_classes": 3}, "features"),
    "Inf features": (lambda: (features().index_fill(1, torch.tensor([3]), float("inf")), LABELS), {"num_classes": 3}, "features"),
    "label too large": (lambda: (features(), torch.tensor([0, 1, 2, 3, 1, 2])), {"num_classes": 3}, "labels"),
    "negative label": (lambda: (features(), torch.tensor([0, -1, 2, 0, 1, 2])), {"num_classes": 3}, "labels"),
    "float labels": (lambda: (features(), LABELS.float()), {"num_classes": 3}, "labels"),
    "labels of wrong length": (lambda: (features(), LABELS[:5]), {"num_classes": 3}, "labels"),
    "2-d labels": (lambda: (features(), LABELS[:, None]), {"num_classes": 3}, "labels"),
    "labels on another device": (lambda: (features(), LABELS.to("meta")), {"num_classes": 3}, "labels"),
    "labels without num_classes": (lambda: (features(), LABELS), {}, "num_classes"),
    "zero classes": (lambda: (features(), LABELS), {"num_classes": 0}, "num_classes"),
    "float num_classes": (lambda: (features(), LABELS), {"num_classes": 3.0}, "num_classes"),
    "neither labels nor target": (lambda: (features(),), {}, "labels"),
    "labels and target": (lambda: (features(), LABELS), {"num_classes": 3, "target": torch.eye(6)}, "target"),
    "target of wrong shape": (lambda: (features(),), {"target": torch.eye(5)}, "target"),
    "integer target": (lambda: (features(),), {"target": torch.eye(6, dtype=torch.long)}, "target"),
    "NaN target": (lambda: (features(),), {"target": torch.full((6, 6), float("nan"))}, "target"),
    "target requiring grad": (lambda: (features(),), {"target": torch.eye(6).requires_grad_()}, "target"),
    "target with num_classes": (lambda: (features(),), {"target": torch.eye(6), "num_classes": 3}, "num_classes"),
}


@pytest.mark.parametrize("case", CASES)
def test_similarity_matching_loss_rejects(case):
    make_args, kwargs, argument = CASES[case]
    with pytest.raises(ValueError, match=argument):
        locallearn.similarity_matching_loss(*make_args(), **kwargs)


@pytest.mark.parametrize(
    "value, argument",
    [
        (torch.randn(4, 5), "input"),
        (torch.randn(4, 5, 1, 1), "input"),
        (torch.ones(2, 3, 4, 4, dtype=torch.int32), "input"),
        ("not a tensor", "input"),
    ],
)
def test_channel_std_rejects(value, argument):
    with pytest.raises(ValueError, match=argument):
        locallearn.channel_std(value)


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.randn(4), r"features must be \(B, D\), got shape \(4,\)"),
        (torch.ones(4, 5, dtype=torch.int64), "features must be float32"),
        (torch.randn(4, 5, dtype=torch.complex64), "features must be float32"),
        ([[0.0, 1.0], [1.0, 0.0]], "features"),
    ],
)
def test_similarity_matrix_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        locallearn.ops.similarity_matrix(value)


NATIVE_ARGUMENT_ERROR = RuntimeError
"""What the native ops raise when called directly (torch.ops.locallearn.*), past the Python
checks: LibTorch's stable ABI can raise only RuntimeError from C++; the message names the argument."""


def test_native_op_checks_its_own_arguments(monkeypatch):
    """Calling torch.ops directly, past the Python checks, still gets an error naming the argument."""
    monkeypatch.undo()
    with pytest.raises(NATIVE_ARGUMENT_ERROR, match="features"):
        torch.ops.locallearn.similarity_matching_loss(torch.randn(1, 4), torch.tensor([0]), None, 2)
    with pytest.raises(NATIVE_ARGUMENT_ERROR, match="labels"):
        torch.ops.locallearn.similarity_matching_loss(torch.randn(3, 4), torch.tensor([0, 1]), None, 2)
    with pytest.raises(NATIVE_ARGUMENT_ERROR, match="spatial"):
        torch.ops.locallearn.channel_std(torch.randn(3, 4, 1))


def _on_cpu_kernel(op, *args):
    """``op``'s CPU kernel called with ``args``, whatever devices they are on: the
    dispatcher would otherwise pick the kernel of the highest-priority device among them."""
    return op.default.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args)


def _similarity_backward_args(generator, device="cpu"):
    loss, normalized, residual, row_stats = torch.ops.locallearn.similarity_matching_loss(
        random_features((6, 5), generator, device=device), LABELS.to(device), None, 3)
    return {"grad_loss": torch.ones_like(loss), "normalized": normalized, "residual": residual,
            "row_stats": row_stats}


def _channel_std_backward_args(generator, device="cpu"):
    x = random_features((2, 3, 4), generator, device=device)
    std, mean = torch.ops.locallearn.channel_std(x)
    return {"grad_std": torch.ones_like(std), "input": x, "mean": mean, "std": std}


BACKWARD_ARGS = {
    "similarity_matching_loss_backward": (_similarity_backward_args, "normalized"),
    "channel_std_backward": (_channel_std_backward_args, "input"),
}
"""Each backward op's arguments in schema order, and the argument the others must share a device with."""

MOVED_ARGUMENTS = [
    ("similarity_matching_loss_backward", "grad_loss"),
    ("similarity_matching_loss_backward", "residual"),
    ("similarity_matching_loss_backward", "row_stats"),
    ("channel_std_backward", "grad_std"),
    ("channel_std_backward", "mean"),
    ("channel_std_backward", "std"),
]


@pytest.mark.parametrize("op_name, argument", MOVED_ARGUMENTS)
def test_native_backward_checks_every_argument_device(op_name, argument, monkeypatch, generator):
    """The orchestration that the CPU and CUDA kernels share checks every tensor's device
    before a pass runs (a CPU 0-dim gradient beside CUDA features would otherwise hand a
    host pointer to a kernel); a meta tensor stands in for the other device here."""
    monkeypatch.undo()
    make_args, reference = BACKWARD_ARGS[op_name]
    args = make_args(generator)
    args[argument] = args[argument].to("meta")
    with pytest.raises(NATIVE_ARGUMENT_ERROR, match=f"{argument} is on meta but {reference} is on cpu"):
        _on_cpu_kernel(getattr(torch.ops.locallearn, op_name), *args.values())


def test_native_backward_rejects_integer_gradients(monkeypatch, generator):
    monkeypatch.undo()
    args = _similarity_backward_args(generator)
    args["grad_loss"] = torch.tensor(1)
    with pytest.raises(NATIVE_ARGUMENT_ERROR, match="grad_loss must be floating point"):
        torch.ops.locallearn.similarity_matching_loss_backward(*args.values())
    args = _channel_std_backward_args(generator)
    args["grad_std"] = args["grad_std"].long()
    with pytest.raises(NATIVE_ARGUMENT_ERROR, match="grad_std must be floating point"):
        torch.ops.locallearn.channel_std_backward(*args.values())


@pytest.mark.cuda
@pytest.mark.parametrize("op_name, argument", MOVED_ARGUMENTS)
def test_cuda_backward_refuses_a_cpu_tensor(op_name, argument, monkeypatch, generator):
    """A direct call with CUDA tensors and one CPU tensor (a 0-dim CPU gradient, say)
    raises before the CUDA kernel could read host memory."""
    monkeypatch.undo()
    make_args, reference = BACKWARD_ARGS[op_name]
    args = make_args(generator, "cuda")
    args[argument] = args[argument].cpu()
    with pytest.raises(NATIVE_ARGUMENT_ERROR, match=f"{argument} is on cpu but {reference} is on cuda"):
        getattr(torch.ops.locallearn, op_name)(*args.values())
