"""Shared test utilities."""

import functools
import importlib
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from locallearn.data import load_digits

def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def random_features(shape, generator, dtype=torch.float32, device="cpu", offset=0.5):
    """Gaussian features with a non-zero mean per row, so that centring matters."""
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    x = x * torch.rand(shape[0], *[1] * (len(shape) - 1), generator=generator, dtype=torch.float64).add(0.5)
    x = x + offset * torch.randn(shape[0], *[1] * (len(shape) - 1), generator=generator, dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def random_labels(batch, num_classes, generator, device="cpu"):
    """Every class in turn, shuffled: all classes appear once the batch allows it, so
    the target similarity has both values and the loss stays away from zero."""
    order = torch.randperm(batch, generator=generator)
    return (order % num_classes).to(device)


def opposing_target(features):
    """A target similarity at least 0.8 away from S(features) off the diagonal.

    With a handful of rows the loss can come arbitrarily close to zero, where any
    relative error is meaningless; against this target it cannot."""
    from locallearn.ops import reference

    similarity = reference.similarity_matrix(features.double())
    target = torch.where(similarity > 0, -0.8, 0.8).double()
    target.fill_diagonal_(1.0)
    return target.to(features.device)


def cuda_param(value):
    """A pytest param for a CUDA case: marked `cuda`, so skipped without a GPU."""
    import pytest

    return pytest.param(value, marks=pytest.mark.cuda)


def native_tolerance(device: str, dtype: torch.dtype) -> float:
    """The bar on relative_error of a native op against its float64 reference: fp32 1e-5 on
    the CPU, 1e-4 on CUDA; float64 1e-10; float16 and bfloat16 two of their own epsilons
    (about 2e-3 and 1.6e-2: their results are rounded to the dtype, and the ops accumulate in
    float32, whose error over the longest reductions here, ε₃₂·√K ≤ 5e-5, is far below them)."""
    if dtype in (torch.bfloat16, torch.float16):
        return 2 * torch.finfo(dtype).eps
    if dtype == torch.float64:
        return 1e-10
    return 1e-5 if device == "cpu" else 1e-4


def half_aware_tolerance(expected: torch.Tensor, dtype: torch.dtype, device: str) -> float:
    """:func:`native_tolerance`, plus, for a tensor of float16 or bfloat16 values, two
    subnormal spacings per element: gradients of order 1/B² (the similarity loss at batch
    130) fall below float16's smallest normal, where the dtype holds them to an absolute,
    not a relative, precision."""
    bound = native_tolerance(device, dtype)
    if dtype in (torch.bfloat16, torch.float16):
        info = torch.finfo(dtype)
        norm = expected.double().norm().clamp_min(1e-30).item()
        bound += 2 * info.tiny * info.eps * expected.numel() ** 0.5 / norm
    return bound


def require_native(device: str) -> str:
    """For tests about the native ops: fail rather than test the fallback."""
    import pytest

    from locallearn import _native

    if device not in _native.built_devices:
        pytest.fail(f"locallearn._C does not serve {device}: {_native.load_error or 'built without it'}")
    return device


def frozen_hidden_test_error(settings) -> float:
    """The last test error of the network of ``settings`` (TrainSettings, resolved for its
    rule: the same activation and batch norm) with its hidden blocks frozen at their
    initialisation and its output layer trained by backprop: what a network whose hidden
    layers never learn reaches, which an accuracy bar must beat."""
    import dataclasses

    from locallearn import engine

    trainer = engine.start_run(dataclasses.replace(settings.resolved(), rule="backprop"), progress=False)
    trainer.rule.model.blocks.requires_grad_(False)
    return trainer.fit()["test_error"]


class NativeDispatches(TorchDispatchMode):
    """Records every ``locallearn::`` op the dispatcher runs while active: the native
    kernels (a public op's pure-PyTorch reference path runs aten ops only)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "locallearn":
            self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script benchmarks/<name>.py as a module. Its folder goes first on sys.path, as
    when the script runs, so that its ``from common import ...`` finds benchmarks/common.py."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(*args, **kwargs):
    """``build_model`` on the meta device: even the 260M-parameter lc-imagenet network or
    the 91M-parameter VGG11B(3x) costs no memory or time."""
    from locallearn.models import build_model

    with torch.device("meta"):
        return build_model(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def normalised_digits():
    """scikit-learn's digits, normalised with the training set's mean and std."""
    split = load_digits()
    mean, std = split.x_train.mean(), split.x_train.std()
    return (split.x_train - mean) / std, split.y_train, (split.x_test - mean) / std, split.y_test


def digits_test_accuracy(rule, steps: int, *, seed: int = 0, batch: int = 128) -> float:
    """Train ``rule`` for ``steps`` batches drawn with replacement (seeded) from the
    normalised digits, then score it on the test split. A rule that asks for an epoch
    pass gets one over the shuffled training set every len(train) / batch steps."""
    x_train, y_train, x_test, y_test = normalised_digits()
    order = torch.Generator().manual_seed(seed)
    epoch = len(x_train) // batch
    for step in range(steps):
        index = torch.randint(len(x_train), (batch,), generator=order)
        rule.train_step(x_train[index], y_train[index])
        if rule.needs_epoch_pass and (step + 1) % epoch == 0:
            permutation = torch.randperm(len(x_train), generator=order)
            rule.end_epoch((x_train[permutation[i:i + batch]], y_train[permutation[i:i + batch]])
                           for i in range(0, len(x_train), batch))
    return (rule.predict(x_test).argmax(1) == y_test).float().mean().item()


def interrupt_at_step(trainer, step_number: int) -> None:
    """Make ``trainer``'s rule raise KeyboardInterrupt at its ``step_number``-th training step
    (a run stopped by the user there)."""
    step, calls = trainer.rule.train_step, []

    def interrupted(x, y):
        calls.append(1)
        if len(calls) == step_number:
            raise KeyboardInterrupt
        return step(x, y)

    trainer.rule.train_step = interrupted


class NanAtStep:
    """Wraps a real rule (a trainer's ``rule``); its output loss turns NaN at step ``bad_step``."""

    def __init__(self, rule, bad_step):
        self.rule, self.bad_step, self.steps = rule, bad_step, 0

    def train_step(self, x, y):
        values = self.rule.train_step(x, y)
        self.steps += 1
        if self.steps == self.bad_step:
            values["loss/output"] = torch.tensor(float("nan"))
        return values

    def __getattr__(self, name):
        return getattr(self.rule, name)
