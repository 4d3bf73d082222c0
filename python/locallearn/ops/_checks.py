"""Input validation shared by the public ops: ValueError with the argument's name,
raised before any native kernel runs."""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def require_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_float(name: str, tensor: Tensor) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be float32, float64, float16 or bfloat16, got {tensor.dtype}"
            + ("; convert it with .float()" if not tensor.is_floating_point() else "")
        )


def require_int(name: str, value: object, low: int, high: int) -> None:
    """ValueError unless ``value`` is an int (not a bool) in [low, high)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise ValueError(f"{name} must be an int in [{low}, {high}), got {value!r}")


def require_same_device(name: str, tensor: Tensor, reference_name: str, reference: Tensor) -> None:
    if tensor.device != reference.device:
        raise ValueError(f"{name} is on {tensor.device} but {reference_name} is on {reference.device}")


def data_checks_enabled(check_values: bool) -> bool:
    """Value checks need a device sync and a concrete tensor: skipped while torch.compile traces."""
    return check_values and not torch.compiler.is_compiling()


def has_non_finite(tensor: Tensor) -> Tensor:
    """A 0-dim bool tensor, True where ``tensor`` holds a NaN or Inf (no sync)."""
    return ~torch.isfinite(tensor).all()


def raise_first_failure(failures: dict[str, Tensor]) -> None:
    """Raises ValueError with the message of the first True flag; one device sync for all."""
    flags = torch.stack(list(failures.values()))
    for message, failed in zip(failures, flags.tolist()):
        if failed:
            raise ValueError(message)
