"""Memory of direct feedback alignment's feedback matrices: stored B_ℓ (K × N_ℓ float32
for every hidden layer ℓ) against the extra memory of projecting e B_ℓ with B_ℓ
generated on the fly (locallearn.nn.DirectFeedback, through locallearn.ops.direct_feedback).

"Accounted" is the pure-PyTorch fallback's, which generates ``chunk`` columns at a time.
Where the native op serves the device it generates B_ℓ in K × 256 tiles per CPU thread
(buffers outside torch's allocator, which the CPU measurement below does not see) or in
shared memory on a GPU, so "measured" is then the native op's and falls far below it.

For every case the table gives, per hidden layer, the stored matrix's bytes and the
generated projection's extra bytes: accounted, max(16·K, 4·(K + batch))·c with
c = min(chunk, N) (two int64 K × c grids while a chunk is generated; then its float32
columns and one batch × c chunk of the product), and measured. Measured is the peak of
``torch.cuda.max_memory_allocated`` on a GPU; on a CPU it is the peak of the bytes held
by tensors that torch operators allocate during the projection (a dispatch mode that
adds each new storage's size and subtracts it when the storage is freed; allocator
caches and BLAS workspaces are not seen). Both leave out the projection's own output
(batch × N_ℓ, the size of the features). On a CPU a layer is measured on its first
2·chunk + 1 columns: every full chunk needs the same temporaries, so the peak is the
full layer's. Seed 003 §3.3 could not run DFA on ImageNet: its stored matrices did not
fit a 16 GB GPU.

    python benchmarks/bench_dfa_memory.py                       # all cases, CPU or GPU
    python benchmarks/bench_dfa_memory.py --cases vgg8b-cifar10 --batch 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import weakref

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from locallearn.models import build_model
from locallearn.nn import DirectFeedback


def vgg8b_shapes(input_shape: tuple[int, ...], num_classes: int) -> tuple[list[tuple[int, ...]], int]:
    return build_model("vgg8b", input_shape, num_classes).block_shapes, num_classes


CASES = {
    "vgg8b-cifar10": lambda: vgg8b_shapes((3, 32, 32), 10),
    "vgg8b-cifar100": lambda: vgg8b_shapes((3, 32, 32), 100),
    "imagenet-64x112x112": lambda: ([(64, 112, 112)], 1000),
    "vgg8b-imagenet": lambda: vgg8b_shapes((3, 224, 224), 1000),
}


class TensorMemory(TorchDispatchMode):
    """Peak bytes held by the storages torch operators allocate while the mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = set()
        for value in tree_leaves(out):
            if isinstance(value, Tensor):
                storage = value.untyped_storage()
                if storage.data_ptr() in seen or any(storage.data_ptr() == t.untyped_storage().data_ptr()
                                                     for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)):
                    continue  # in place or a view: nothing new
                seen.add(storage.data_ptr())
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, storage.nbytes())
        return out

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


def accounted_extra(num_classes: int, size: int, chunk: int, batch: int) -> int:
    return max(16 * num_classes, 4 * (num_classes + batch)) * min(chunk, size)


def measured_extra(num_classes: int, size: int, chunk: int, batch: int, device: torch.device) -> int:
    """Peak bytes of one generated projection beyond its input and output."""
    if device.type != "cuda":
        size = min(size, 2 * chunk + 1)
    feedback = DirectFeedback(num_classes, [size], seed=0, chunk=chunk, device=device)
    error = torch.randn(batch, num_classes, device=device)
    output_bytes = batch * size * 4
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        projected = feedback(error, 0)
        torch.cuda.synchronize()
        del projected
        return torch.cuda.max_memory_allocated() - before - output_bytes
    with TensorMemory() as memory:
        feedback(error, 0)
    return memory.peak - output_bytes


def projection_ms(num_classes: int, size: int, chunk: int, batch: int, mode: str, device: torch.device,
                  repeats: int = 5) -> float:
    """Median wall time of one projection e B_ℓ (after one warm-up)."""
    feedback = DirectFeedback(num_classes, [size], seed=0, mode=mode, chunk=chunk, device=device)
    error = torch.randn(batch, num_classes, device=device)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        feedback(error, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times[1:])[repeats // 2]


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=16384, help="columns generated at a time (dfa_chunk)")
    parser.add_argument("--time-below", type=float, default=2e7,
                        help="also time stored vs generated projections of layers with K·N below this")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch}, chunk {args.chunk}, "
          f"{torch.get_num_threads()} threads")
    header = (f"{'case':<20} {'layer':>5} {'features':>16} {'K':>5} {'stored MiB':>11} {'gen. acc. MiB':>14} "
              f"{'gen. meas. MiB':>15} {'stored ms':>10} {'gen. ms':>9}")
    print(header)
    print("-" * len(header))
    results = []
    for case in args.cases:
        shapes, num_classes = CASES[case]()
        stored_total, generated_peak = 0, 0
        for layer, shape in enumerate(shapes):
            size = torch.Size(shape).numel()
            stored = num_classes * size * 4
            accounted = accounted_extra(num_classes, size, args.chunk, args.batch)
            measured = measured_extra(num_classes, size, args.chunk, args.batch, device)
            timed = num_classes * size < args.time_below
            times = {mode: projection_ms(num_classes, size, args.chunk, args.batch, mode, device)
                     for mode in ("stored", "generated")} if timed else {}
            stored_total += stored
            generated_peak = max(generated_peak, measured)
            results.append({"case": case, "layer": layer, "features": list(shape), "num_classes": num_classes,
                            "stored_bytes": stored, "generated_accounted_bytes": accounted,
                            "generated_measured_bytes": measured, "ms": times})
            print(f"{case:<20} {layer:>5} {'×'.join(map(str, shape)):>16} {num_classes:>5} {mib(stored):>11} "
                  f"{mib(accounted):>14} {mib(measured):>15} "
                  f"{times.get('stored', float('nan')):>10.2f} {times.get('generated', float('nan')):>9.2f}")
        print(f"{case:<20} {'all':>5} {'':>16} {'':>5} {mib(stored_total):>11} {'':>14} {mib(generated_peak):>15}"
              f"   (stored: every layer's matrix held; generated: the largest one projection's peak)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"benchmark": "dfa_memory", "device": name, "torch": torch.__version__, "batch": args.batch,
                       "chunk": args.chunk, "layers": results}, file, indent=2)


if __name__ == "__main__":
    main()
