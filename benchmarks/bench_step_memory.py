"""Peak memory of one training step per rule, against backprop's, at the same batch.

Each rule trains its model for one warm-up step (which allocates the optimiser state),
then one measured step. What a step holds at its peak is counted by the allocator:
- on a GPU, torch.cuda.max_memory_allocated over the step;
- on a CPU, the CPU allocator's own events, recorded by torch.profiler with
  profile_memory=True (every allocation and free, with its bytes, in order): the
  running sum's maximum is the step's peak above what was live before it.
"state" is what was live before the step (parameters, buffers, optimiser state, the batch;
gradients are dropped first, so the step counts the ones it makes);
"peak" = state + the step's peak above it. The issue-17 target: predsim's peak ≤ 0.5 ×
backprop's for VGG8B on Fashion-MNIST at batch 128.

    python benchmarks/bench_step_memory.py --model vgg8b --batch 128 --json step_memory.json
"""

from __future__ import annotations

import argparse

import torch
from common import run_info, write_json
from torch.profiler import ProfilerActivity, profile

from locallearn.models import build_model
from locallearn.rules import build_rule, default_activation, default_batch_norm

DEFAULT_RULES = ["backprop", "pred", "sim", "predsim", "predsim-bio", "fa", "dfa"]


def live_tensor_bytes(*modules_and_tensors) -> int:
    """Bytes of the distinct storages of the given tensors and of every tensor in the given
    optimisers' states and modules' state dicts."""
    storages = {}
    for item in modules_and_tensors:
        if isinstance(item, torch.optim.Optimizer):
            tensors = [value for state in item.state.values() for value in state.values()
                       if isinstance(value, torch.Tensor)]
        elif isinstance(item, torch.nn.Module):
            tensors = list(item.state_dict(keep_vars=True).values())
        else:
            tensors = [item]
        for tensor in tensors:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def cpu_step_peak(step) -> int:
    """The most bytes the CPU allocator held at once during ``step()``, above what it held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = sorted((event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"),
                    key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def step_memory(rule_name: str, model_name: str, input_shape: tuple[int, ...], batch: int,
                device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(model_name, input_shape, 10, activation=default_activation(rule_name),
                        batch_norm=default_batch_norm(rule_name)).to(device)
    rule = build_rule(rule_name, model, lr=5e-4)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(10, (batch,), device=device)
    rule.train_step(x, y)
    for optimizer in rule.optimizers():  # the step allocates its gradients itself
        optimizer.zero_grad(set_to_none=True)
    state = live_tensor_bytes(rule.trainable_modules(), *rule.optimizers(), x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        rule.train_step(x, y)
        torch.cuda.synchronize(device)
        above = torch.cuda.max_memory_allocated(device) - before
    else:
        above = cpu_step_peak(lambda: rule.train_step(x, y))
    return {"rule": rule_name, "state_mb": state / 2**20, "step_peak_above_state_mb": above / 2**20,
            "peak_mb": (state + above) / 2**20}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg8b")
    parser.add_argument("--input-shape", type=int, nargs=3, default=[1, 28, 28], help="C H W (Fashion-MNIST's)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rules", nargs="+", default=DEFAULT_RULES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if "backprop" not in args.rules:
        args.rules.insert(0, "backprop")
    rows = [step_memory(rule, args.model, tuple(args.input_shape), args.batch, device) for rule in args.rules]
    backprop = next(row for row in rows if row["rule"] == "backprop")
    for row in rows:
        row["peak_vs_backprop"] = row["peak_mb"] / backprop["peak_mb"]
        row["step_vs_backprop"] = row["step_peak_above_state_mb"] / backprop["step_peak_above_state_mb"]
    method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "CPU allocator events (torch.profiler)"
    result = {"benchmark": "step_memory", **run_info(device, argv), "model": args.model, "batch": args.batch,
              "input_shape": args.input_shape, "method": method, "rows": rows}
    print(f"{args.model}, input {tuple(args.input_shape)}, batch {args.batch}, {result['device']}; {method}")
    print(f"{'rule':<13}{'state MB':>10}{'step peak MB':>14}{'peak MB':>10}{'peak / bp':>11}{'step / bp':>11}")
    for row in rows:
        print(f"{row['rule']:<13}{row['state_mb']:>10.0f}{row['step_peak_above_state_mb']:>14.0f}"
              f"{row['peak_mb']:>10.0f}{row['peak_vs_backprop']:>11.2f}{row['step_vs_backprop']:>11.2f}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
