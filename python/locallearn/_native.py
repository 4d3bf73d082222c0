"""Loads the compiled ops (``locallearn._C``) and says which devices they serve.

Every op has a pure-PyTorch reference in :mod:`locallearn.ops.reference`. It runs
instead of the native op when the extension is not built, was built without the
tensor's device, or is switched off with ``LOCALLEARN_DISABLE_NATIVE=1``; the first
such fallback on each device type warns once. An extension that is built but fails
to load (an undefined symbol, built against another torch) is an ImportError: a
broken build must not pass for a working one.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

DISABLE_ENV = "LOCALLEARN_DISABLE_NATIVE"
OP_NAMESPACE = "locallearn"
EXTENSION_MODULE = "locallearn._C"


def _load_extension():
    """(the extension, None), or (None, why not) when it is switched off or not built;
    raises ImportError when it is built but fails to load."""
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return None, f"switched off by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    try:
        return importlib.import_module(EXTENSION_MODULE), None
    except (ImportError, OSError) as error:
        if isinstance(error, ModuleNotFoundError) and error.name == EXTENSION_MODULE:
            return None, str(error)
        raise ImportError(_broken_extension_message(error)) from error


def _broken_extension_message(error: Exception) -> str:
    return (
        f"{EXTENSION_MODULE} is built but fails to load ({type(error).__name__}: {error}). It needs torch 2.10 or "
        f"newer with the same CUDA major it was built for (a CPU build for a CPU-only torch); this is torch "
        f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}). Install the locallearn wheel that matches it "
        f"(README, Installing), or build from source against it with `pip install --no-build-isolation .`, or set "
        f"{DISABLE_ENV}=1 to run the pure-PyTorch reference ops instead."
    )


extension, load_error = _load_extension()
"""The imported ``locallearn._C`` module, or None; ``load_error`` says why not."""

built_devices: frozenset[str] = frozenset()
if extension is not None:
    built_devices = frozenset({"cpu", "cuda"} if extension.with_cuda else {"cpu"})

_warned_devices: set[str] = set()


def serves(device: torch.device) -> bool:
    """Whether the native ops run on ``device``; warns once per device type when not."""
    if device.type in built_devices:
        return True
    if device.type not in _warned_devices:
        _warned_devices.add(device.type)
        reason = load_error if extension is None else f"it was built without {device.type} support"
        warnings.warn(
            f"locallearn: native ops unavailable on {device.type} ({reason}); "
            "running the pure-PyTorch reference implementations instead",
            stacklevel=3,
        )
    return False


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the dispatcher holds a native kernel of ``locallearn::op`` for a device type."""
    if extension is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{OP_NAMESPACE}::{op}", device_type.upper())
