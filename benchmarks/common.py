"""What the benchmark scripts share: timing a step (CUDA events on a GPU, wall time
elsewhere), the proof that a "fused" column ran the native ops, the matmul roofline,
achieved rates and relative differences, the cells of their tables, the record of where
and how a run happened, and writing the JSON file.

The scripts run as ``python benchmarks/bench_x.py``, which puts this folder first on
``sys.path``: they import it as ``from common import ...``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import locallearn
from locallearn import _native

ALLOW_REFERENCE_HELP = ("if the native ops do not run, time the other implementations anyway, drop the fused "
                        "columns and record why (default: stop with an error)")


class NativeCheck:
    """Proof that a benchmark's fused implementations run the native ops of locallearn._C,
    so that no pure-PyTorch fallback is timed as "fused".

    ``call`` runs one untimed fused call under torch.profiler, which records an event
    ``locallearn::<op>`` for every call of a ``torch.ops.locallearn`` op (its backward
    too); an op counts as native when its event appears and the dispatcher holds a
    locallearn._C kernel of it for the device. Without that proof the run stops with
    SystemExit saying why, or, with ``allow_reference``, keeps going without its fused
    columns and records why (``record``).
    """

    def __init__(self, device: torch.device, allow_reference: bool):
        self.device = device
        self.allow_reference = allow_reference
        self.ops_seen: set[str] = set()
        self.checked = False
        self.reason: str | None = None

    @property
    def ran(self) -> bool:
        """Whether every checked call ran its native ops."""
        return self.checked and self.reason is None

    def call(self, fused, required_ops: tuple[str, ...]):
        """``fused()``'s result; checks that it ran every op of ``required_ops`` natively."""
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            result = fused()
        prefix = f"{_native.OP_NAMESPACE}::"
        seen = {event.name.removeprefix(prefix) for event in profile.events() if event.name.startswith(prefix)}
        self.ops_seen |= seen
        self.checked = True
        missing = [op for op in required_ops if op not in seen or not _native.has_kernel(op, self.device.type)]
        if missing and self.reason is None:
            self.reason = self._why_not_native(missing)
            if not self.allow_reference:
                raise SystemExit(f"refusing to report a fused column: {self.reason}; pass --allow-reference "
                                 "to time the other implementations without it")
        return result

    def implementations(self, fns: dict) -> dict:
        """``fns`` without the fused ones (names starting with "fused") unless the native ops ran."""
        return fns if self.ran else {name: fn for name, fn in fns.items() if not name.startswith("fused")}

    def record(self) -> dict:
        """What ran, for the JSON: whether the native ops did, which ones, on what device, and why not."""
        return {"ran": self.ran, "ops": sorted(self.ops_seen), "device": self.device.type, "reason": self.reason}

    def _why_not_native(self, missing: list[str]) -> str:
        if _native.extension is None:
            return f"locallearn._C is not loaded ({_native.load_error})"
        if self.device.type not in _native.built_devices:
            return f"locallearn._C was built without {self.device.type}"
        ops = ", ".join(f"{_native.OP_NAMESPACE}::{op}" for op in missing)
        return f"{ops} did not run natively on {self.device.type}"


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
    """TFLOP/s of a size³ matmul on fresh random operands (TF32 for fp32 where torch's precision allows)."""
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
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo on Linux, where
    platform.processor() is often empty) with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model or 'cpu'}, {os.cpu_count()} cores"


def versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "locallearn": locallearn.__version__}


def run_info(device: torch.device, argv: list[str] | None) -> dict:
    """When (UTC), how (the command line, or the main() call) and where a benchmark ran, with which
    versions and torch's float32 matmul precision on CUDA ("tf32", "ieee", or "none": torch's
    default, IEEE), read through the precision API, which the legacy allow_tf32 flag is deprecated for."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]) if argv is None else f"main({argv})",
        "device": device_name(device),
        **versions(),
        "fp32_matmul_precision": torch.backends.cuda.matmul.fp32_precision,
    }


def run_line(result: dict, *details: str) -> str:
    """'device, torch …, CUDA …[, native ops …][, details]; roofline TFLOP/s: float32 …, …' of a result."""
    native = result.get("native")
    if native:
        details = ("native ops ran" if native["ran"] else f"no fused columns: {native['reason']}", *details)
    return (", ".join([result["device"], f"torch {result['torch']}", f"CUDA {result['cuda']}", *details])
            + "; roofline TFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["roofline_tflops"].items()))


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` as indented JSON; nothing without a path."""
    if path:
        with open(path, "w") as handle:
            json.dump(result, handle, indent=2)
