"""Every native op of locallearn forward and backward once, on odd sizes, for
compute-sanitizer (memcheck and racecheck) to watch; the device check runs it.

Each case runs in float32 (with TF32 off and on: two kernel paths on a GPU),
bfloat16 and float16, the locally-connected ops also with tensor cores switched off
(their SIMT kernels in half precision, which sm_80+ otherwise never runs), once on a
small odd size and once on a size that spans several 64 × 64 tiles and reduction tiles
of the locally-connected kernels and rows longer than one 256-thread block of the row
kernels. It fails unless the native op serves the device (so the sanitizer never
watches the pure-PyTorch fallback) and every output and gradient is finite.

    python tools/sanitizer_ops.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from locallearn import _native
from locallearn.ops import (
    NATIVE_OPS,
    locally_connected,
    channel_std,
    difference_target,
    direct_feedback,
    locally_connected2d,
    locally_connected2d_transpose,
    locally_connected2d_weight_grad,
    locally_connected_output_size,
    similarity_matching_loss,
)

NUM_CLASSES = 7
PRECISIONS = {  # name → (dtype, torch.backends.cuda.matmul.fp32_precision, LC tensor cores allowed)
    "float32": (torch.float32, "ieee", True),
    "float32-tf32": (torch.float32, "tf32", True),
    "bfloat16": (torch.bfloat16, "ieee", True),
    "float16": (torch.float16, "ieee", True),
    # Half precision takes the LC tensor-core kernels on sm_80+; these reach the SIMT ones.
    "bfloat16-simt": (torch.bfloat16, "ieee", False),
    "float16-simt": (torch.float16, "ieee", False),
}


class Sizes(NamedTuple):
    batch: int
    features: int  # D of the (B, D) similarity inputs
    channels: int  # C of (B, C, H, W) inputs and C_in of the LC layer
    out_channels: int  # C_out of the LC layer
    image: tuple[int, int]


SIZES = {
    "odd": Sizes(batch=5, features=37, channels=5, out_channels=3, image=(7, 9)),
    "multi-tile": Sizes(batch=67, features=300, channels=8, out_channels=70, image=(6, 7)),
}
WINDOWS = {  # kernel_size, stride, padding, dilation
    "odd": dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    "multi-tile": dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
}


def require_native(device: torch.device) -> None:
    """Exit unless locallearn._C holds a native kernel of every op for ``device``."""
    missing = [op for op in NATIVE_OPS if not _native.has_kernel(op, device.type)]
    if missing:
        reason = _native.load_error or f"built without {device.type}"
        raise SystemExit(f"no native {device.type} kernel for {', '.join(missing)} ({reason}): "
                         "the sanitizer would only watch the pure-PyTorch fallback")


def leaf(shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device).to(dtype).requires_grad_()


def backward_of(output: torch.Tensor, *leaves: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """``output`` and its leaves' gradients after a backward pass from a random gradient."""
    output.backward(torch.randn(output.shape, generator=generator, device=output.device).to(output.dtype))
    return [output, *(tensor.grad for tensor in leaves)]


def similarity_cases(sizes: Sizes, dtype, device, generator) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """The similarity-matching loss on (B, D) features with labels and with a target
    matrix, and on (B, C, H, W) activations (through channel_std), and channel_std alone."""
    batch = sizes.batch
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator, device=device)
    target = torch.rand(batch, batch, generator=generator, device=device) * 2 - 1
    target = (target + target.T) / 2
    target.fill_diagonal_(1.0)

    def loss_of(features: torch.Tensor, **target_arguments) -> list[torch.Tensor]:
        loss = similarity_matching_loss(features, **target_arguments)
        loss.backward()
        return [loss, features.grad]

    def features() -> torch.Tensor:
        return leaf((batch, sizes.features), dtype, device, generator)

    def activations() -> torch.Tensor:
        return leaf((batch, sizes.channels, *sizes.image), dtype, device, generator)

    def channel_std_case() -> list[torch.Tensor]:
        input = activations()
        deviation = channel_std(input)
        deviation.backward(torch.randn(deviation.shape, generator=generator, device=device).to(dtype))
        return [deviation, input.grad]

    return {
        "similarity_matching_loss(features, labels)":
            lambda: loss_of(features(), labels=labels, num_classes=NUM_CLASSES),
        "similarity_matching_loss(features, target=)": lambda: loss_of(features(), target=target),
        "similarity_matching_loss(activations, labels)":
            lambda: loss_of(activations(), labels=labels, num_classes=NUM_CLASSES),
        "channel_std": channel_std_case,
    }


def locally_connected_cases(sizes: Sizes, window: dict, dtype, device, generator) -> dict:
    """locally_connected2d, its transpose and its weight gradient, each forward and backward."""
    kernel_height, kernel_width = window["kernel_size"]
    out_size = locally_connected_output_size(sizes.image, **window)
    weight_shape = (out_size[0] * out_size[1], sizes.out_channels, sizes.channels * kernel_height * kernel_width)

    def input() -> torch.Tensor:
        return leaf((sizes.batch, sizes.channels, *sizes.image), dtype, device, generator)

    def grad_output() -> torch.Tensor:
        return leaf((sizes.batch, sizes.out_channels, *out_size), dtype, device, generator)

    def forward() -> list[torch.Tensor]:
        x, weight = input(), leaf(weight_shape, dtype, device, generator)
        bias = leaf((sizes.out_channels, *out_size), dtype, device, generator)
        return backward_of(locally_connected2d(x, weight, bias, **window), x, weight, bias, generator=generator)

    def transpose() -> list[torch.Tensor]:
        y, weight = grad_output(), leaf(weight_shape, dtype, device, generator)
        return backward_of(locally_connected2d_transpose(y, weight, sizes.image, **window), y, weight,
                           generator=generator)

    def weight_grad() -> list[torch.Tensor]:
        x, y = input(), grad_output()
        return backward_of(locally_connected2d_weight_grad(x, y, **window), x, y, generator=generator)

    return {"locally_connected2d": forward, "locally_connected2d_transpose": transpose,
            "locally_connected2d_weight_grad": weight_grad}


def target_and_feedback_cases(sizes: Sizes, dtype, device, generator) -> dict:
    """difference_target forward and backward: (B, D) below, (B, C_out) above, tanh; and
    direct_feedback (forward only, no gradient) of a (B, C_out) error to D·C features."""

    def case() -> list[torch.Tensor]:
        shapes = [(sizes.batch, sizes.features), (sizes.batch, sizes.out_channels), (sizes.batch, sizes.out_channels),
                  (sizes.features, sizes.out_channels), (sizes.features,)]
        inputs = [leaf(shape, dtype, device, generator) for shape in shapes]
        return backward_of(difference_target(*inputs, "tanh"), *inputs, generator=generator)

    def projection() -> list[torch.Tensor]:
        error = torch.randn(sizes.batch, sizes.out_channels, generator=generator, device=device).to(dtype)
        return [direct_feedback(error, 0, 1, sizes.features * sizes.channels)]

    return {"difference_target": case, "direct_feedback": projection}


def engine(device: torch.device, tensor_cores: bool):
    """The LC kernels' engine for a case: the SIMT kernels where ``tensor_cores`` is False
    (a CUDA build's switch; the CPU kernels have one engine)."""
    if tensor_cores or device.type != "cuda":
        return contextlib.nullcontext()
    return locally_connected.tensor_cores(False)


def run_all(device: torch.device, seed: int) -> int:
    """Runs every case; returns how many ran. Raises on a non-finite result."""
    generator = torch.Generator(device=device).manual_seed(seed)
    count = 0
    for size_name, sizes in SIZES.items():
        for precision, (dtype, fp32_precision, tensor_cores) in PRECISIONS.items():
            torch.backends.cuda.matmul.fp32_precision = fp32_precision
            cases = locally_connected_cases(sizes, WINDOWS[size_name], dtype, device, generator)
            if tensor_cores:
                cases = {**similarity_cases(sizes, dtype, device, generator),
                         **target_and_feedback_cases(sizes, dtype, device, generator), **cases}
            for name, case in cases.items():
                begin = time.perf_counter()
                with engine(device, tensor_cores):
                    results = case()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                bad = [index for index, tensor in enumerate(results) if not torch.isfinite(tensor).all()]
                if bad:
                    raise SystemExit(f"{name} [{size_name}, {precision}]: results {bad} are not finite")
                print(f"ok  {name:<46} {size_name:<10} {precision:<12} {time.perf_counter() - begin:6.2f} s",
                      flush=True)
                count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    require_native(device)
    count = run_all(device, args.seed)
    print(f"{count} op calls forward and backward on {device}, every result finite")


if __name__ == "__main__":
    main()
