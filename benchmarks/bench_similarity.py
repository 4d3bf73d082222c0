"""Forward + backward of the similarity-matching loss: the fused op against the eager
reference and torch.compile(reference), side by side in one run.

Each configuration times one training step (loss, then backward into the features)
with fresh random features and labels, rotating among several input sets, as the
median over --repeats runs after --warmup runs (CUDA events on a GPU). Achieved
TFLOP/s count the model FLOPs 4·B²·D (the Gram matrix Z Zᵀ and the gradient
product E Z, 2·B²·D each) for every implementation, so TFLOP/s ratios are speed
ratios; the roofline is a square matmul of the same dtype measured in this run.
The fused columns are reported only when one untimed fused step is seen to run the
native ops (common.NativeCheck); otherwise the run stops, or with --allow-reference
times the reference columns alone.

On the GPU (writes the table to stdout and everything to the JSON file):
    python benchmarks/bench_similarity.py --json bench_similarity.json
A quick CPU run:
    python benchmarks/bench_similarity.py --device cpu --batches 128 --dims 512 --roofline-size 1024
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import (ALLOW_REFERENCE_HELP, NativeCheck, cell, dtype_name, matmul_rooflines, per_second,
                    relative_difference, run_info, run_line, speedup, timed_runs, write_json)

import locallearn
from locallearn.ops import reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NUM_CLASSES = 10
NATIVE_OPS = ("similarity_matching_loss", "similarity_matching_loss_backward")


def training_step(loss_fn):
    def step(features: torch.Tensor, labels: torch.Tensor) -> None:
        features.grad = None
        loss_fn(features, labels).backward()

    return step


def implementations(compile_reference: bool) -> dict:
    fns = {
        "fused": lambda h, y: locallearn.similarity_matching_loss(h, y, num_classes=NUM_CLASSES, check_values=False),
        "fused+checks": lambda h, y: locallearn.similarity_matching_loss(h, y, num_classes=NUM_CLASSES),
        "eager": lambda h, y: reference.similarity_matching_loss(h, y, None, NUM_CLASSES),
    }
    if compile_reference:
        torch._dynamo.reset()
        compiled = torch.compile(reference.similarity_matching_loss)
        fns["compile"] = lambda h, y: compiled(h, y, None, NUM_CLASSES)
    return fns


def gradient(loss_fn, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss's gradient in the features, in float32."""
    features.grad = None
    loss_fn(features, labels).backward()
    grad = features.grad.float()
    features.grad = None
    return grad


def bench_config(batch: int, dim: int, dtype: torch.dtype, device: torch.device, native: NativeCheck,
                 args) -> dict:
    generator = torch.Generator(device=device).manual_seed(batch * 100003 + dim)
    inputs = [
        (
            torch.randn(batch, dim, device=device, dtype=dtype, generator=generator).requires_grad_(),
            torch.randint(0, NUM_CLASSES, (batch,), device=device, generator=generator),
        )
        for _ in range(args.input_sets)
    ]
    row = {"batch": batch, "dim": dim, "dtype": dtype_name(dtype), "ms": {}}
    fns = implementations(not args.no_compile)
    expected = gradient(fns["eager"], *inputs[0])
    actual = native.call(lambda: gradient(fns["fused"], *inputs[0]), NATIVE_OPS)
    # the fused gradient is checked against eager's so that no row times a wrong result
    row["grad_rel_diff_vs_eager"] = relative_difference(actual, expected) if native.ran else None
    for name, loss_fn in native.implementations(fns).items():
        try:
            times = timed_runs(training_step(loss_fn), inputs, args.warmup, args.repeats, device)
            row["ms"][name] = statistics.median(times)
        except torch.OutOfMemoryError:
            row["ms"][name] = None
            torch.cuda.empty_cache()
    flops = 4 * batch * batch * dim
    row["model_tflop"] = flops / 1e12
    row["tflops"] = per_second(row["ms"], flops, 1e12)
    return row


def format_table(rows: list[dict], rooflines: dict[str, float]) -> str:
    header = (
        f"{'B':>5} {'D':>6} {'dtype':>8} {'fused ms':>9} {'+checks':>8} {'eager ms':>9} {'compile':>8}"
        f" {'x eager':>8} {'x comp.':>8} {'TFLOP/s':>8} {'roofline':>9}"
    )
    lines = [header]
    for row in rows:
        ms = row["ms"]
        fused = ms.get("fused")
        roofline = rooflines.get(row["dtype"])
        fraction = row["tflops"]["fused"] / roofline if roofline and row["tflops"].get("fused") else None
        lines.append(
            f"{row['batch']:>5} {row['dim']:>6} {row['dtype']:>8} {cell(fused, '9.3f')} "
            f"{cell(ms.get('fused+checks'), '8.3f')} {cell(ms.get('eager'), '9.3f')} {cell(ms.get('compile'), '8.3f')}"
            f" {speedup(ms, 'eager'):>8} {speedup(ms, 'compile'):>8} {cell(row['tflops'].get('fused'), '8.1f')}"
            f" {cell(fraction, '9.1%')}"
        )
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512, 2048, 8192])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 4096, 16384])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--input-sets", type=int, default=3, help="fresh input sets to rotate among")
    parser.add_argument("--roofline-size", type=int, default=8192)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--allow-reference", action="store_true", help=ALLOW_REFERENCE_HELP)
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    rooflines = matmul_rooflines([DTYPES[name] for name in args.dtypes], args.roofline_size, device)
    native = NativeCheck(device, args.allow_reference)
    rows = [
        bench_config(batch, dim, DTYPES[name], device, native, args)
        for name in args.dtypes
        for batch in args.batches
        for dim in args.dims
    ]
    result = {
        "benchmark": "similarity_matching_loss forward+backward",
        **run_info(device, argv),
        "native": native.record(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "roofline_tflops": rooflines,
        "rows": rows,
    }
    print(run_line(result))
    print(format_table(rows, rooflines))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
