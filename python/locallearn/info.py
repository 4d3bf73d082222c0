"""What `locallearn info` prints: versions, the native extension, and which
implementation each op runs on each device."""

from __future__ import annotations

import torch

import locallearn
from locallearn import _native
from locallearn.ops import NATIVE_OPS

DEVICE_TYPES = ("cpu", "cuda")


def op_implementations() -> dict[str, dict[str, str]]:
    """For each op and device type: "native" if the dispatcher holds a kernel of
    locallearn._C for it, else "reference" (the pure-PyTorch fallback)."""
    return {
        op: {device: "native" if _native.has_kernel(op, device) else "reference" for device in DEVICE_TYPES}
        for op in NATIVE_OPS
    }


def report() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    lines = [
        f"locallearn {locallearn.__version__}",
        f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'}; GPU: {gpu})",
    ]
    if _native.extension is None:
        lines.append(f"extension  locallearn._C not loaded: {_native.load_error}")
        lines.append("           every op runs its pure-PyTorch reference")
    else:
        extension = _native.extension
        built = (f"cpu + cuda (CUDA {extension.cuda_version}, architectures {extension.cuda_arch_list})"
                 if extension.with_cuda else "cpu only")
        lines.append(f"extension  locallearn._C built for {built}")
        lines.append(f"           {_native.extension.__file__}")
    width = max(len(op) for op in NATIVE_OPS)
    lines.append("")
    lines.append(f"{'op':<{width}}  " + "  ".join(f"{d:<9}" for d in DEVICE_TYPES))
    for op, by_device in op_implementations().items():
        lines.append(f"{op:<{width}}  " + "  ".join(f"{by_device[d]:<9}" for d in DEVICE_TYPES))
    return "\n".join(lines)
