"""What the benchmark scripts share: timing a step (CUDA events on a GPU, wall time
elsewhere), the matmul roofline, achieved rates and relative differences, the cells of
their tables, the record of where and how a run happened, and writing the JSON file.

The scripts run as ``python benchmarks/bench_x.py``, which puts this folder first on
``sys.path``: they import it as ``from common import ...``.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import sys
import time

import torch

import locallearn


def fill_unset(args, presets: dict) -> None:
    """Give every option of ``args`` still None its value in ``presets`` (a script's --quick
    or full-run defaults)."""
    for key, value in presets.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def timed_runs(step, inputs: list, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Milliseconds of `step(*inputs[i % len(inputs)])` for `repeats` runs after `warmup`."""
    for i in range(warmup):
        step(*inputs[i % len(inputs)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for i, (start, end) in enumerate(events):
            start.record()
            step(*inputs[i % len(inputs)])
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for i in range(repeats):
        begin = time.perf_counter()
        step(*inputs[i % len(inputs)])
        times.append((time.perf_counter() - begin) * 1e3)
    return times


def matmul_roofline(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 20) -> float:
    """TFLOP/s of a size³ matmul on fresh random operands (honours allow_tf32 for fp32)."""
    operands = [
        (torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype))
        for _ in range(2)
    ]
    times = timed_runs(torch.mm, operands, warmup=3, repeats=repeats, device=device)
    return 2 * size**3 / (statistics.median(times) * 1e-3) / 1e12


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: how rows and rooflines name a dtype."""
    return str(dtype).removeprefix("torch.")


def matmul_rooflines(dtypes, size: int, device: torch.device) -> dict[str, float]:
    """dtype name → matmul_roofline TFLOP/s, for each of ``dtypes``."""
    return {dtype_name(dtype): matmul_roofline(size, dtype, device) for dtype in dtypes}


def per_second(ms: dict, amount: float, unit: float = 1.0) -> dict:
    """implementation → ``amount`` per second in ``unit``s, from its milliseconds (None stays None)."""
    return {impl: (amount / (value * 1e-3) / unit if value else None) for impl, value in ms.items()}


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖."""
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def cell(value, fmt: str) -> str:
    """``value`` in format ``fmt`` ('9.3f'), or a dash right-aligned to its width for None."""
    return format(value, fmt) if value is not None else "-".rjust(int(fmt.split(".")[0]))


def speedup(ms: dict, other: str, base: str = "fused") -> str:
    """How many times faster ``base`` ran than ``other`` ('3.2x'), or '-' if either is missing."""
    return f"{ms[other] / ms[base]:.1f}x" if ms.get(base) and ms.get(other) else "-"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "locallearn": locallearn.__version__}


def run_info(device: torch.device, argv: list[str] | None) -> dict:
    """When (UTC), how (the command line, or the main() call) and where a benchmark ran, with which versions."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]) if argv is None else f"main({argv})",
        "device": device_name(device),
        **versions(),
    }


def run_line(result: dict, *details: str) -> str:
    """'device, torch …, CUDA …[, details]; roofline TFLOP/s: float32 …, …' of a result."""
    return (", ".join([result["device"], f"torch {result['torch']}", f"CUDA {result['cuda']}", *details])
            + "; roofline TFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["roofline_tflops"].items()))


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` as indented JSON; nothing without a path."""
    if path:
        with open(path, "w") as handle:
            json.dump(result, handle, indent=2)
