"""The locally-connected 2-d op on the layers of seed 003 Table 3: the fused op against
the eager reference (unfold + einsum) and torch.compile(reference), side by side in
one run; then one backprop training step of the full ImageNet network of Table 3.

Each case is one layer of the CIFAR network (cifar1-3) or one of the first three of the
ImageNet network (imagenet1-3), with the geometry ``build_model`` gives it. Two modes:
"forward+backward" (the layer, then the gradients of input, weight and bias) and
"transpose" (the transpose map of seed 003 §5.4 alone). Times are medians over
--repeats runs after --warmup runs (CUDA events on a GPU), rotating among input sets;
peak memory is torch.cuda.max_memory_allocated over one more run, reset before it.

Achieved rates count model work for every implementation, so their ratios are speed
ratios. FLOPs: 2·B·L·C_out·K per product (L = H_out·W_out, K = C_in·kh·kw), one for
the transpose, three for forward+backward. Bytes: each tensor read or written once per
pass — transpose y, W, x; forward+backward x, W, b, y forward, then dy, x, W, dx, dW,
db. Rooflines measured in the same run: a square cuBLAS matmul in each dtype (FLOP/s)
and a device-to-device copy (GB/s, read plus write). The fused columns are reported
only when one untimed fused step of each case is seen to run the native ops
(common.NativeCheck); otherwise the run stops, or with --allow-reference times the
reference columns alone.

The training step (forward, backward, Adam step) runs the "backprop" rule on lc-imagenet
for (3, 224, 224) images and 1000 classes with seed 003's tanh and no batch norm, and
reports its median time and peak memory (target: at most 16 GB at batch 256).

On the GPU (prints the table, writes everything to the JSON file):
    python benchmarks/bench_locally_connected.py --json bench_locally_connected.json
A quick CPU run (small batches, one dtype, a small training step):
    python benchmarks/bench_locally_connected.py --device cpu --quick --no-compile
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import (ALLOW_REFERENCE_HELP, NativeCheck, cell, dtype_name, fill_unset, matmul_rooflines, per_second,
                    relative_difference, run_info, run_line, speedup, timed_runs, write_json)

from locallearn.models import build_model
from locallearn.ops import locally_connected2d, locally_connected2d_transpose, reference
from locallearn.rules import build_rule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYER_SOURCES = {"cifar": ("lc-cifar", (3, 32, 32), 3), "imagenet": ("lc-imagenet", (3, 224, 224), 3)}
MODES = ("forward+backward", "transpose")
NATIVE_OPS = {"forward+backward": ("locally_connected2d", "locally_connected2d_transpose",
                                   "locally_connected2d_weight_grad"),
              "transpose": ("locally_connected2d_transpose",)}
"""mode → the locallearn ops its fused step must run natively."""
TRAIN_TARGET_GB = 16
FULL = dict(cases=None, batches=[64, 256], dtypes=["fp32", "bf16"], repeats=20, warmup=5, roofline_size=8192,
            copy_mib=1024, train_batch=256, train_size=224, train_repeats=5)
QUICK = dict(cases=["cifar1", "cifar3"], batches=[4], dtypes=["fp32"], repeats=3, warmup=1, roofline_size=512,
             copy_mib=16, train_batch=4, train_size=32, train_repeats=2)


def table3_layers() -> dict:
    """name → the LocallyConnected2d (on the meta device) of that Table 3 layer."""
    layers = {}
    for prefix, (model, input_shape, count) in LAYER_SOURCES.items():
        with torch.device("meta"):
            network = build_model(model, input_shape, 10, batch_norm=False)
        for index, block in enumerate(network.blocks[:count]):
            layers[f"{prefix}{index + 1}"] = block.layer
    return layers


def peak_memory(step, inputs: tuple, device: torch.device) -> dict | None:
    """Peak allocated MiB during one step, and the part above what was resident before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    step(*inputs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_mib": peak / 2**20, "workspace_mib": (peak - resident) / 2**20}


def copy_roofline(mib: int, device: torch.device) -> float:
    """GB/s of a device-to-device copy of ``mib`` MiB, counting the read and the write."""
    source = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    times = timed_runs(target.copy_, [(source,)], warmup=3, repeats=20, device=device)
    return 2 * source.numel() / (statistics.median(times) * 1e-3) / 1e9


def implementations(compile_reference: bool) -> dict:
    """name → (forward, transpose), called as forward(x, weight, bias, window) and
    transpose(y, weight, input_size, window) with ``window`` the layer's window() dict."""
    fns = {
        "fused": (lambda x, weight, bias, window: locally_connected2d(x, weight, bias, **window),
                  lambda y, weight, size, window: locally_connected2d_transpose(y, weight, size, **window)),
        "eager": (lambda x, weight, bias, window: reference.locally_connected2d(x, weight, bias, *window.values()),
                  lambda y, weight, size, window: reference.locally_connected2d_transpose(y, weight, size,
                                                                                          *window.values())),
    }
    if compile_reference:
        torch._dynamo.reset()
        forward = torch.compile(reference.locally_connected2d)
        transpose = torch.compile(reference.locally_connected2d_transpose)
        fns["compile"] = (lambda x, weight, bias, window: forward(x, weight, bias, *window.values()),
                          lambda y, weight, size, window: transpose(y, weight, size, *window.values()))
    return fns


def forward_backward_step(forward, weight, bias, window):
    def step(x, grad_output):
        x.grad = weight.grad = bias.grad = None
        forward(x, weight, bias, window).backward(grad_output)

    return step


def transpose_step(transpose, weight, input_size, window):
    def step(x, grad_output):
        transpose(grad_output, weight, input_size, window)

    return step


def results_of(fn, weight, bias, window, mode: str, x, grad_output, input_size) -> list[torch.Tensor]:
    """What one implementation computes on one input set, in float32."""
    if mode == "transpose":
        with torch.no_grad():
            return [fn[1](grad_output, weight, input_size, window).float()]
    x.grad = weight.grad = bias.grad = None
    fn[0](x, weight, bias, window).backward(grad_output)
    results = [x.grad.float(), weight.grad.float(), bias.grad.float()]
    x.grad = weight.grad = bias.grad = None
    return results


def bench_case(name: str, layer, mode: str, batch: int, dtype: torch.dtype, device: torch.device,
               native: NativeCheck, args) -> dict:
    fns = implementations(not args.no_compile)  # compiled afresh: one shape per case, no recompile limit
    generator = torch.Generator(device=device).manual_seed(batch * 7919 + len(name))
    window = layer.window()
    weight = (torch.rand(layer.weight.shape, device=device, generator=generator) * 2 - 1).mul_(layer.glorot_bound)
    weight = weight.to(dtype)
    bias = torch.randn(layer.bias.shape, device=device, generator=generator).mul_(0.1).to(dtype)
    grad_enabled = mode == "forward+backward"
    weight.requires_grad_(grad_enabled)
    bias.requires_grad_(grad_enabled)
    inputs = [(torch.randn(batch, layer.in_channels, *layer.input_size, device=device, generator=generator,
                           dtype=dtype).requires_grad_(grad_enabled),
               torch.randn(batch, layer.out_channels, *layer.output_size, device=device, generator=generator,
                           dtype=dtype))
              for _ in range(args.input_sets)]
    row = {"case": name, "mode": mode, "batch": batch, "dtype": dtype_name(dtype),
           "layer": repr(layer), "ms": {}, "memory": {}}
    expected = results_of(fns["eager"], weight, bias, window, mode, *inputs[0], layer.input_size)
    actual = native.call(lambda: results_of(fns["fused"], weight, bias, window, mode, *inputs[0], layer.input_size),
                         NATIVE_OPS[mode])
    row["rel_diff_vs_eager"] = (max(relative_difference(a, e) for a, e in zip(actual, expected)) if native.ran
                                else None)
    del expected, actual
    for impl, fn in native.implementations(fns).items():
        step = (forward_backward_step(fn[0], weight, bias, window) if grad_enabled
                else transpose_step(fn[1], weight, layer.input_size, window))
        try:
            with torch.set_grad_enabled(grad_enabled):
                row["ms"][impl] = statistics.median(timed_runs(step, inputs, args.warmup, args.repeats, device))
                row["memory"][impl] = peak_memory(step, inputs[0], device)
        except torch.OutOfMemoryError:
            row["ms"][impl] = row["memory"][impl] = None
            torch.cuda.empty_cache()
    products = 3 if grad_enabled else 1
    locations = layer.output_size[0] * layer.output_size[1]
    flops = products * 2 * batch * locations * layer.out_channels * layer.weight.shape[2]
    sizes = {"x": inputs[0][0].numel(), "W": weight.numel(), "b": bias.numel(), "y": inputs[0][1].numel()}
    elements = (3 * sizes["x"] + 3 * sizes["W"] + 2 * sizes["b"] + 2 * sizes["y"] if grad_enabled
                else sizes["x"] + sizes["W"] + sizes["y"])
    row["model_tflop"] = flops / 1e12
    row["model_gb"] = elements * weight.element_size() / 1e9
    row["tflops"] = per_second(row["ms"], flops, 1e12)
    row["gbps"] = per_second(row["ms"], row["model_gb"])
    return row


def training_step(device: torch.device, native: NativeCheck, args) -> dict:
    """Median time and peak memory of backprop steps on the full lc-imagenet network,
    after one untimed step checked for the native ops."""
    torch.manual_seed(0)
    shape = (3, args.train_size, args.train_size)
    model = build_model("lc-imagenet", shape, 1000, activation="tanh", batch_norm=False).to(device)
    rule = build_rule("backprop", model, lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = [(torch.randn(args.train_batch, *shape, device=device, generator=generator),
               torch.randint(0, 1000, (args.train_batch,), device=device, generator=generator)) for _ in range(2)]
    result = {"model": "lc-imagenet", "input_shape": list(shape), "batch": args.train_batch, "rule": "backprop",
              "optimizer": "adam", "parameters": sum(p.numel() for p in model.parameters())}
    try:
        native.call(lambda: rule.train_step(*inputs[0]), NATIVE_OPS["forward+backward"])
        times = timed_runs(rule.train_step, inputs, warmup=2, repeats=args.train_repeats, device=device)
        result["ms"] = statistics.median(times)
        memory = peak_memory(rule.train_step, inputs[0], device)
        result["peak_gb"] = memory["peak_mib"] * 2**20 / 1e9 if memory else None
    except torch.OutOfMemoryError:
        result["ms"] = result["peak_gb"] = None
    result["within_target"] = result["peak_gb"] <= TRAIN_TARGET_GB if result["peak_gb"] is not None else None
    return result


def format_table(rows: list[dict], rooflines: dict[str, float], bandwidth: float) -> str:
    header = (f"{'case':>9} {'mode':>16} {'B':>4} {'dtype':>8} {'fused ms':>9} {'eager ms':>9} {'compile':>8}"
              f" {'x eager':>8} {'x comp.':>8} {'TFLOP/s':>8} {'of peak':>8} {'GB/s':>7} {'of peak':>8}"
              f" {'MiB fused':>9} {'eager':>7} {'compile':>7}")
    lines = [header]
    for row in rows:
        ms = row["ms"]
        fused = ms.get("fused")

        def memory(impl):
            value = row["memory"].get(impl)
            return value["peak_mib"] if value else None

        tflops, gbps = row["tflops"].get("fused"), row["gbps"].get("fused")
        flop_share = tflops / rooflines[row["dtype"]] if tflops else None
        byte_share = gbps / bandwidth if gbps else None
        lines.append(
            f"{row['case']:>9} {row['mode']:>16} {row['batch']:>4} {row['dtype']:>8} {cell(fused, '9.3f')}"
            f" {cell(ms.get('eager'), '9.3f')} {cell(ms.get('compile'), '8.3f')} {speedup(ms, 'eager'):>8}"
            f" {speedup(ms, 'compile'):>8} {cell(tflops, '8.2f')} {cell(flop_share, '8.1%')} {cell(gbps, '7.0f')}"
            f" {cell(byte_share, '8.1%')} {cell(memory('fused'), '9.0f')} {cell(memory('eager'), '7.0f')}"
            f" {cell(memory('compile'), '7.0f')}")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="a small run: cifar1 and cifar3 at batch 4 in fp32, few repeats, small rooflines, "
                             "the training step at batch 4 on 32×32 images (the CPU smoke path)")
    parser.add_argument("--cases", nargs="+", help="layers to run (default: all; --quick: cifar1 cifar3)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--input-sets", type=int, default=2, help="fresh input sets to rotate among")
    parser.add_argument("--roofline-size", type=int, help="side of the roofline matmul")
    parser.add_argument("--copy-mib", type=int, help="size of the roofline copy")
    parser.add_argument("--train-batch", type=int)
    parser.add_argument("--train-size", type=int, help="image side of the training step")
    parser.add_argument("--train-repeats", type=int)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--allow-reference", action="store_true", help=ALLOW_REFERENCE_HELP)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    fill_unset(args, QUICK if args.quick else FULL)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    layers = table3_layers()
    cases = args.cases or list(layers)
    unknown = sorted(set(cases) - set(layers))
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(layers)}")
    rooflines = matmul_rooflines([DTYPES[name] for name in args.dtypes], args.roofline_size, device)
    bandwidth = copy_roofline(args.copy_mib, device)
    native = NativeCheck(device, args.allow_reference)
    rows = [bench_case(case, layers[case], mode, batch, DTYPES[name], device, native, args)
            for name in args.dtypes for case in cases for mode in args.modes for batch in args.batches]
    train = None if args.no_train else training_step(device, native, args)
    result = {
        "benchmark": "locally_connected2d forward+backward and transpose (seed 003 Table 3 layers)",
        **run_info(device, argv),
        "native": native.record(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "roofline_tflops": rooflines,
        "roofline_gbps": bandwidth,
        "rows": rows,
        "training_step": train,
    }
    print(run_line(result) + f"; copy {bandwidth:.0f} GB/s")
    print(format_table(rows, rooflines, bandwidth))
    if train:
        peak = f"{train['peak_gb']:.2f} GB" if train["peak_gb"] is not None else "n/a"
        step = f"{train['ms']:.1f} ms" if train["ms"] is not None else "out of memory"
        print(f"training step, lc-imagenet {tuple(train['input_shape'])} batch {train['batch']}, backprop + Adam, "
              f"{train['parameters'] / 1e6:.1f}M parameters: {step}, peak {peak} (target ≤ {TRAIN_TARGET_GB} GB)")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
