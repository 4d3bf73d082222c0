"""The analysis tools on large point sets: TwoNN intrinsic dimension end to end and the
CKA matrix between two networks, against the baselines a user would otherwise run, side
by side in one run, with the distance-GEMM floor measured in the same run.

TwoNN (``twonn_dimension(points, backend="torch")``: distinct-point check, exact
neighbour distances, eq. (2) fit) on points with a known intrinsic dimension (a
10-dimensional standard Gaussian mapped into D dimensions by a random orthonormal basis,
plus isotropic noise of total norm about --noise), drawn fresh on the device, against:

- "naive": the GPU code one would write first, here in the script: chunked
  ``torch.cdist`` (fp32) + ``topk(k=3)``, the point itself dropped, the same fit. It
  does no distinct-point check (the library does), so its time is a lower bound;
- "skdim": scikit-dimension's ``skdim.id.TwoNN().fit(X)`` on this machine's CPU cores
  (a NumPy copy of the same points; the copy is not timed), for N ≤ --skdim-max-n only:
  for D > 25 it forms every row of the N×N distance matrix (scikit-learn's
  pairwise_distances_chunked) and sorts it, so its time grows as N² (N² log N for the
  sort). Where it did not run, the speed-up against it is extrapolated from the largest N
  it ran at with the same D as time ∝ N² (an underestimate of its time), marked "~";
- "faiss": ``twonn_dimension(points, backend="faiss")``, when faiss imports (on CUDA
  points without a faiss GPU build it searches on the CPU, so then N ≤ --skdim-max-n).

Every implementation's estimate is kept and the table prints the largest relative
difference from the torch backend's: they must agree (different neighbour arithmetic,
the same fit), so no row times a wrong result.

The floor: the torch backend's candidate pass is one N×N×D distance GEMM, in bf16 with
float32 accumulation on CUDA GPUs with bf16 tensor cores and in float32 elsewhere. Since
N×N does not fit at N=1M, the floor is measured as T×D by D×T tile matmuls (T = 8192, or
N when smaller) in that precision on fresh random operands: the median tile time times
(N/T)², i.e. tiled matmuls of the same total FLOPs. "of floor" = floor / TwoNN time.

CKA: ``cka_matrix(acts_a, acts_b)`` for two networks of 10 layers (widths from
--cka-max-width / 16 to --cka-max-width, 64 to 1024 by default: random tanh layers applied
in turn to one shared 32-dimensional input, so the layers share structure) on N examples,
in one call: the full linear CKA below --cka-minibatch-from examples, the minibatch
debiased HSIC (``batch_size=``) from there on. Against a per-pair Python loop of
``cka(x, y)`` over the 100 pairs, where its two N×N Gram matrices fit and N ≤
--cka-loop-max-n (the table says why it was skipped).

Timing: medians of CUDA-event times (wall time on the CPU and for skdim) after warm-up.
The first call of each implementation gives its estimate and is the first warm-up run;
a call that takes --case-seconds or more is timed once (that first call: one-off
start-up costs are negligible at that length), otherwise the runs are capped so that
one implementation spends about --case-seconds per case (at most --repeats). The JSON
file is rewritten after every row, so a run cut short keeps what it measured.

The issue's targets (ratios measured in the same run; the CKA times for the H200) are
printed at the end beside the measured numbers.

On the GPU (the full grid; prints the tables, writes everything to the JSON file):
    python benchmarks/bench_analysis.py --json bench_analysis.json
A quick CPU run:
    python benchmarks/bench_analysis.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics

import numpy as np
import torch
from common import (cell, dtype_name, fill_unset, matmul_rooflines, run_info, run_line, speedup, timed_runs,
                    write_json)

from locallearn.analysis.cka import cka, cka_matrix
from locallearn.analysis.intrinsic_dimension import twonn_dimension, twonn_from_distances
from locallearn.analysis.neighbors import CANDIDATE_DTYPES, candidate_precision, inner_products

try:
    import skdim
except ImportError:  # scikit-dimension is a baseline, not a dependency
    skdim = None

INTRINSIC_DIMENSION = 10
DISCARD_FRACTION = 0.1
CKA_LAYERS = 10
CKA_INPUT_DIM = 32
TILE = 8192
FULL = dict(ns=[10_000, 100_000, 1_000_000], dims=[128, 1024, 4096], cka_ns=[10_000, 100_000], repeats=10,
            warmup=2, case_seconds=3.0, roofline_size=8192, roofline_repeats=10, cka_minibatch_from=50_000,
            cka_batch_size=4096, cka_loop_max_n=10_000, cka_max_width=1024, naive_block_gb=2.0)
QUICK = dict(ns=[2000, 4000], dims=[32, 128], cka_ns=[500, 2000], repeats=3, warmup=1, case_seconds=0.5,
             roofline_size=512, roofline_repeats=3, cka_minibatch_from=2000, cka_batch_size=500,
             cka_loop_max_n=500, cka_max_width=256, naive_block_gb=0.25)
TARGETS = {  # the issue's targets: ratios measured in the same run, the CKA times for the H200
    "twonn_100k_x_floor": 2.0, "twonn_100k_x_naive": 3.5, "twonn_100k_x_skdim": 500.0, "twonn_1m_x_floor": 2.0,
    "cka_10k_ms": 100.0, "cka_100k_ms": 2000.0,
}
"""The TwoNN times were set as 0.1 s at N = 100k and 10 s at N = 1M (D = 1024) on an H100,
where the N×N×D distance GEMM takes about 0.05 s and 5 s: within 2× of that floor."""


# ------------------------------------------------------------------ timing


def measure(fn, inputs: list, device: torch.device, args) -> tuple:
    """(fn's value on inputs[0], median ms, timed runs); see the module docstring."""
    values = []

    def step(*arguments):
        values.append(fn(*arguments))

    first = timed_runs(step, inputs[:1], warmup=0, repeats=1, device=device)[0]
    value = values[0]
    if first >= args.case_seconds * 1e3:
        return value, first, 1
    repeats = max(1, min(args.repeats, int(args.case_seconds * 1e3 / first)))
    times = timed_runs(step, inputs, max(0, args.warmup - 1), repeats, device)
    return value, statistics.median(times), repeats


def guarded(fn, device: torch.device):
    """fn() or, when the device runs out of memory, None and the note to print."""
    try:
        return fn(), None
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, "out of memory"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------ TwoNN


def manifold_points(n: int, dim: int, noise: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n points of a standard Gaussian in INTRINSIC_DIMENSION dimensions, mapped into ``dim``
    by a random orthonormal basis, plus Gaussian noise of total norm about ``noise``."""
    basis, _ = torch.linalg.qr(torch.randn(dim, INTRINSIC_DIMENSION, generator=generator, device=device))
    points = torch.randn(n, INTRINSIC_DIMENSION, generator=generator, device=device) @ basis.T
    return points.add_(torch.randn(n, dim, generator=generator, device=device), alpha=noise / math.sqrt(dim))


def naive_twonn(points: torch.Tensor, block_rows: int) -> float:
    """TwoNN the first way one would write it on a GPU: fp32 ``torch.cdist`` of a block of
    rows against all points, ``topk(3)`` smallest (the point itself first), then the fit."""
    r1 = torch.empty(len(points), device=points.device)
    r2 = torch.empty_like(r1)
    for start in range(0, len(points), block_rows):
        nearest = torch.cdist(points[start:start + block_rows], points).topk(3, dim=1, largest=False).values
        r1[start:start + block_rows], r2[start:start + block_rows] = nearest[:, 1], nearest[:, 2]
    return twonn_from_distances(r1, r2, DISCARD_FRACTION)


def skdim_twonn(points: np.ndarray) -> float:
    return float(skdim.id.TwoNN(discard_fraction=DISCARD_FRACTION).fit(points).dimension_)


def faiss_status(device: torch.device) -> str | None:
    """None without faiss, else 'gpu' or 'cpu': where its search runs for points on ``device``."""
    try:
        faiss = importlib.import_module("faiss")
    except ImportError:
        return None
    gpu = device.type == "cuda" and hasattr(faiss, "GpuIndexFlatL2") and faiss.get_num_gpus() > 0
    return "gpu" if gpu else "cpu"


def candidate_pass_dtype(device: torch.device) -> torch.dtype:
    """The precision of the torch backend's candidate GEMM on ``device``."""
    return CANDIDATE_DTYPES[candidate_precision(device)]


def tile_ms(side: int, dim: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """Median ms of one side×dim by dim×side product in ``dtype`` on fresh random operands."""
    generator = torch.Generator(device=device).manual_seed(side * 31 + dim)
    operands = [tuple(torch.randn(side, dim, generator=generator, device=device).to(dtype) for _ in range(2))
                for _ in range(2)]
    return statistics.median(timed_runs(inner_products, operands, warmup=3, repeats=repeats,
                                        device=device))


def bench_twonn(n: int, dim: int, device: torch.device, args, floors: dict, faiss_where: str | None) -> dict:
    points_gb = n * dim * 4 / 1e9
    row = {"n": n, "d": dim, "points_gb": points_gb, "ms": {}, "runs": {}, "estimates": {}, "notes": []}
    if points_gb > args.max_points_gb:
        row["skipped"] = f"points {points_gb:.1f} GB > --max-points-gb {args.max_points_gb:g}"
        return row
    dtype = candidate_pass_dtype(device)
    side = min(n, TILE)
    if (side, dim) not in floors:
        floors[side, dim] = tile_ms(side, dim, dtype, device, args.roofline_repeats)
    row["floor_dtype"] = dtype_name(dtype)
    row["floor_ms"] = floors[side, dim] * (n / side) ** 2
    row["model_tflop"] = 2 * n * n * dim / 1e12

    generator = torch.Generator(device=device).manual_seed(n * 7919 + dim)
    inputs = [(manifold_points(n, dim, args.noise, generator, device),) for _ in range(args.input_sets)]
    block_rows = max(1, min(n, int(args.naive_block_gb * 1e9) // (4 * n)))
    impls = {
        "torch": (lambda x: twonn_dimension(x, discard_fraction=DISCARD_FRACTION, backend="torch"), device, inputs),
        "naive": (lambda x: naive_twonn(x, block_rows), device, inputs),
    }
    if skdim is None:
        row["notes"].append("skdim: not installed")
    elif n <= args.skdim_max_n and not args.no_skdim:
        cpu_inputs = [(points.cpu().numpy(),) for (points,) in inputs]
        impls["skdim"] = (skdim_twonn, torch.device("cpu"), cpu_inputs)
    elif not args.no_skdim:
        row["notes"].append(f"skdim: N > --skdim-max-n {args.skdim_max_n}")
    if faiss_where == "gpu" or (faiss_where == "cpu" and (device.type == "cpu" or n <= args.skdim_max_n)):
        impls["faiss"] = (lambda x: twonn_dimension(x, discard_fraction=DISCARD_FRACTION, backend="faiss"),
                          device, inputs)
    for name, (fn, timing_device, impl_inputs) in impls.items():
        measured, note = guarded(lambda: measure(fn, impl_inputs, timing_device, args), device)
        if measured is None:
            row["ms"][name] = row["estimates"][name] = None
            row["notes"].append(f"{name}: {note}")
        else:
            row["estimates"][name], row["ms"][name], row["runs"][name] = measured
    reference = row["estimates"].get("torch")
    row["estimate_rel_diff_vs_torch"] = {
        name: abs(value - reference) / abs(reference) for name, value in row["estimates"].items()
        if name != "torch" and value is not None and reference} if reference else {}
    row["floor_fraction"] = row["floor_ms"] / row["ms"]["torch"] if row["ms"].get("torch") else None
    return row


def extrapolate_skdim(rows: list[dict]) -> None:
    """Where skdim did not run, its time scaled as N² from the largest N it ran at, same D."""
    for row in rows:
        if row.get("skipped") or row["ms"].get("skdim") is not None:
            continue
        measured = [other for other in rows if other["d"] == row["d"] and other["ms"].get("skdim")]
        if measured:
            source = max(measured, key=lambda other: other["n"])
            row["skdim_ms_extrapolated"] = source["ms"]["skdim"] * (row["n"] / source["n"]) ** 2
            row["skdim_extrapolated_from_n"] = source["n"]


def skdim_speedup(row: dict) -> tuple[float | None, bool]:
    """(how many times faster the torch backend ran than skdim, whether extrapolated)."""
    torch_ms = row["ms"].get("torch")
    if not torch_ms:
        return None, False
    if row["ms"].get("skdim"):
        return row["ms"]["skdim"] / torch_ms, False
    if row.get("skdim_ms_extrapolated"):
        return row["skdim_ms_extrapolated"] / torch_ms, True
    return None, False


TWONN_HEADER = (f"{'N':>8} {'D':>5} {'torch ms':>10} {'naive ms':>10} {'skdim ms':>9} {'faiss ms':>9}"
                f" {'x naive':>8} {'x skdim':>8} {'floor ms':>9} {'of floor':>8} {'d torch':>7}"
                f" {'max Δd/d':>8}  notes")


def format_twonn_row(row: dict) -> str:
    if row.get("skipped"):
        return f"{row['n']:>8} {row['d']:>5}  skipped: {row['skipped']}"
    ms = row["ms"]
    ratio, extrapolated = skdim_speedup(row)
    x_skdim = "-" if ratio is None else ("~" if extrapolated else "") + f"{ratio:.{0 if ratio >= 10 else 1}f}x"
    differences = [value for value in row["estimate_rel_diff_vs_torch"].values()]
    notes = list(row["notes"])
    if extrapolated:
        notes.append(f"skdim extrapolated as N² from N={row['skdim_extrapolated_from_n']}")
    single = [name for name, runs in row["runs"].items() if runs == 1]
    if single:
        notes.append("timed once: " + ", ".join(single))
    return (f"{row['n']:>8} {row['d']:>5} {cell(ms.get('torch'), '10.2f')} {cell(ms.get('naive'), '10.2f')}"
            f" {cell(ms.get('skdim'), '9.1f')} {cell(ms.get('faiss'), '9.2f')} {speedup(ms, 'naive', 'torch'):>8}"
            f" {x_skdim:>8} {cell(row['floor_ms'], '9.2f')} {cell(row['floor_fraction'], '8.1%')}"
            f" {cell(row['estimates'].get('torch'), '7.3f')} {cell(max(differences, default=None), '8.1e')}"
            f"  {'; '.join(notes)}")


# ------------------------------------------------------------------ CKA


def cka_widths(max_width: int) -> list[int]:
    """CKA_LAYERS widths growing geometrically from max_width / 16 to max_width (64 … 1024)."""
    return [max(1, round(max_width / 16 * 16 ** (layer / (CKA_LAYERS - 1)))) for layer in range(CKA_LAYERS)]


def network_activations(inputs: torch.Tensor, widths: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    """The activations of a random tanh network with layers of these widths on ``inputs``."""
    activations, hidden = [], inputs
    for width in widths:
        weight = torch.randn(hidden.shape[1], width, generator=generator, device=inputs.device)
        hidden = torch.tanh(hidden @ weight / math.sqrt(hidden.shape[1]) * 1.5)
        activations.append(hidden)
    return activations


def cka_pair_loop(acts_a: list[torch.Tensor], acts_b: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[cka(x, y) for y in acts_b] for x in acts_a], dtype=torch.float64)


def loop_fits(n: int, device: torch.device) -> bool:
    """Whether ``cka``'s two centred N×N Gram matrices and their product (float32 on a GPU,
    float64 on the CPU) fit: in a quarter of the free GPU memory, or 4 GiB on the CPU."""
    if device.type == "cuda":
        return 3 * n * n * 4 <= torch.cuda.mem_get_info(device)[0] / 4
    return 3 * n * n * 8 <= 4 * 2**30


def bench_cka(n: int, device: torch.device, args) -> dict:
    generator = torch.Generator(device=device).manual_seed(n + 12345)
    minibatch = n >= args.cka_minibatch_from
    widths = cka_widths(args.cka_max_width)
    row = {"n": n, "layers": CKA_LAYERS, "widths": widths, "ms": {}, "runs": {}, "notes": [],
           "estimator": (f"debiased linear HSIC over minibatches of {args.cka_batch_size}" if minibatch
                         else "biased linear CKA over all N")}
    inputs = []
    for _ in range(args.input_sets):
        shared = torch.randn(n, CKA_INPUT_DIM, generator=generator, device=device)
        inputs.append((network_activations(shared, widths, generator),
                       network_activations(shared, widths, generator)))
    options = dict(debiased=True, batch_size=args.cka_batch_size) if minibatch else {}
    impls = {"batched": lambda acts_a, acts_b: cka_matrix(acts_a, acts_b, **options)}
    if n > args.cka_loop_max_n:
        row["notes"].append(f"loop skipped: N > --cka-loop-max-n {args.cka_loop_max_n}")
    elif not loop_fits(n, device):
        row["notes"].append("loop skipped: its two N×N Gram matrices would not fit")
    else:
        impls["loop"] = cka_pair_loop
    matrices = {}
    for name, fn in impls.items():
        measured, note = guarded(lambda: measure(fn, inputs, device, args), device)
        if measured is None:
            row["ms"][name] = None
            row["notes"].append(f"{name}: {note}")
        else:
            matrices[name], row["ms"][name], row["runs"][name] = measured
    if "batched" in matrices:
        row["cka_diagonal"] = matrices["batched"].diagonal().double().cpu().tolist()
    if "batched" in matrices and "loop" in matrices and not minibatch:
        difference = matrices["batched"].double().cpu() - matrices["loop"]
        row["max_abs_diff_vs_loop"] = difference.abs().max().item()
    return row


CKA_HEADER = (f"{'N':>8} {'layers':>9} {'batched ms':>11} {'loop ms':>10} {'x loop':>7} {'max |Δ|':>8}"
              f"  estimator; notes")


def format_cka_row(row: dict) -> str:
    ms = row["ms"]
    return (f"{row['n']:>8} {'2x' + str(row['layers']):>9} {cell(ms.get('batched'), '11.2f')}"
            f" {cell(ms.get('loop'), '10.2f')} {speedup(ms, 'loop', 'batched'):>7}"
            f" {cell(row.get('max_abs_diff_vs_loop'), '8.1e')}  {'; '.join([row['estimator'], *row['notes']])}")


# ------------------------------------------------------------------ targets


def targets(twonn_rows: list[dict], cka_rows: list[dict]) -> list[dict]:
    """The issue's targets beside what this run measured (None where the case did not run)."""
    def twonn_row(n, dim):
        return next((row for row in twonn_rows if (row["n"], row["d"]) == (n, dim) and not row.get("skipped")), None)

    def cka_row(n):
        return next((row for row in cka_rows if row["n"] == n), None)

    def over_floor(row):
        return row["ms"]["torch"] / row["floor_ms"] if row and row["ms"].get("torch") and row.get("floor_ms") else None

    at_100k, at_1m = twonn_row(100_000, 1024), twonn_row(1_000_000, 1024)
    ratio, extrapolated = skdim_speedup(at_100k) if at_100k else (None, False)
    naive_ratio = (at_100k["ms"]["naive"] / at_100k["ms"]["torch"]
                   if at_100k and at_100k["ms"].get("naive") and at_100k["ms"].get("torch") else None)
    entries = [
        ("TwoNN end to end, N=100k, D=1024: × GEMM floor", over_floor(at_100k), "<=", TARGETS["twonn_100k_x_floor"],
         ""),
        ("  speed-up vs the naive GPU code", naive_ratio, ">=", TARGETS["twonn_100k_x_naive"], ""),
        ("  speed-up vs skdim on the CPU", ratio, ">=", TARGETS["twonn_100k_x_skdim"],
         "extrapolated as N²" if extrapolated else ""),
        ("TwoNN end to end, N=1M, D=1024: × GEMM floor", over_floor(at_1m), "<=", TARGETS["twonn_1m_x_floor"], ""),
        ("CKA 10x10, N=10k (ms, H200)", (cka_row(10_000) or {}).get("ms", {}).get("batched"), "<=",
         TARGETS["cka_10k_ms"], ""),
        ("CKA 10x10, N=100k, minibatch HSIC (ms, H200)", (cka_row(100_000) or {}).get("ms", {}).get("batched"), "<=",
         TARGETS["cka_100k_ms"], ""),
    ]
    return [{"what": what, "measured": value, "relation": relation, "target": target,
             "met": None if value is None else (value <= target if relation == "<=" else value >= target),
             "note": note} for what, value, relation, target, note in entries]


def format_targets(entries: list[dict]) -> str:
    lines = ["targets (ratios measured in this run; the CKA times for the H200):"]
    for entry in entries:
        status = "not run" if entry["met"] is None else ("met" if entry["met"] else "NOT met")
        value = "-" if entry["measured"] is None else f"{entry['measured']:.4g}"
        note = f" ({entry['note']})" if entry["note"] else ""
        lines.append(f"  {entry['what']:<42} {value:>10}  target {entry['relation']} {entry['target']:g}: "
                     f"{status}{note}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="a small run for the CPU: TwoNN at N 2000 and 4000, D 32 and 128; CKA with widths 16-256 "
                             "at N=500 (with the loop) and 2000 (minibatches of 500); few repeats, small rooflines")
    parser.add_argument("--ns", type=int, nargs="+", help="TwoNN point counts")
    parser.add_argument("--dims", type=int, nargs="+", help="TwoNN ambient dimensions")
    parser.add_argument("--cka-ns", type=int, nargs="+", help="CKA example counts")
    parser.add_argument("--no-twonn", action="store_true")
    parser.add_argument("--no-cka", action="store_true")
    parser.add_argument("--no-skdim", action="store_true", help="skip scikit-dimension")
    parser.add_argument("--repeats", type=int, help="most timed runs per implementation and case")
    parser.add_argument("--warmup", type=int, help="warm-up runs, counting the first call")
    parser.add_argument("--case-seconds", type=float, help="about how long each implementation is timed per case")
    parser.add_argument("--input-sets", type=int, default=2, help="fresh input sets to rotate among")
    parser.add_argument("--max-points-gb", type=float, default=8.0,
                        help="skip TwoNN cases whose float32 points take more (1M x 4096 takes 16.4 GB)")
    parser.add_argument("--skdim-max-n", type=int, default=20_000, help="largest N for skdim (and CPU-side faiss)")
    parser.add_argument("--noise", type=float, default=0.01, help="norm of the noise added to each point")
    parser.add_argument("--naive-block-gb", type=float, help="size of the naive code's cdist blocks")
    parser.add_argument("--cka-minibatch-from", type=int, help="N from which CKA uses minibatch HSIC")
    parser.add_argument("--cka-batch-size", type=int, help="minibatch size of the minibatch HSIC")
    parser.add_argument("--cka-loop-max-n", type=int, help="largest N for the per-pair cka() loop")
    parser.add_argument("--cka-max-width", type=int, help="width of the widest CKA layer (the narrowest: 1/16)")
    parser.add_argument("--roofline-size", type=int, help="side of the square roofline matmul")
    parser.add_argument("--roofline-repeats", type=int, help="timed runs of each floor tile")
    parser.add_argument("--json", help="write the results here (rewritten after every row)")
    args = parser.parse_args(argv)
    fill_unset(args, QUICK if args.quick else FULL)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    pass_dtype = candidate_pass_dtype(device)
    rooflines = matmul_rooflines(sorted({torch.float32, pass_dtype}, key=str), args.roofline_size, device)
    faiss_where = faiss_status(device)
    result = {
        "benchmark": "TwoNN intrinsic dimension end to end and the CKA matrix (analysis tools)",
        **run_info(device, argv),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats, "warmup": args.warmup, "case_seconds": args.case_seconds,
        "intrinsic_dimension": INTRINSIC_DIMENSION, "noise": args.noise, "discard_fraction": DISCARD_FRACTION,
        "candidate_pass_dtype": dtype_name(pass_dtype), "faiss": faiss_where,
        "roofline_tflops": rooflines, "cka": [], "twonn": [], "targets": [],
    }
    print(run_line(result, f"{os.cpu_count()} CPU cores", f"faiss {faiss_where or 'not installed'}"), flush=True)
    if not args.no_cka:
        widths = cka_widths(args.cka_max_width)
        print(f"\nCKA matrix, 2 networks x {CKA_LAYERS} layers (widths {widths[0]}-{widths[-1]}), "
              f"batched cka_matrix vs a per-pair cka() loop:\n{CKA_HEADER}", flush=True)
        for n in args.cka_ns:
            result["cka"].append(bench_cka(n, device, args))
            print(format_cka_row(result["cka"][-1]), flush=True)
            write_json(args.json, result)
    if not args.no_twonn:
        print(f"\nTwoNN end to end on a d={INTRINSIC_DIMENSION} Gaussian in D dimensions (torch backend vs naive "
              f"cdist+topk, skdim on {os.cpu_count()} CPU cores, faiss); floor = N×N×D {dtype_name(pass_dtype)} "
              f"GEMM as {TILE}-tiles:\n{TWONN_HEADER}", flush=True)
        floors = {}
        for n in args.ns:
            for dim in args.dims:
                result["twonn"].append(bench_twonn(n, dim, device, args, floors, faiss_where))
                extrapolate_skdim(result["twonn"])
                print(format_twonn_row(result["twonn"][-1]), flush=True)
                write_json(args.json, result)
    result["targets"] = targets(result["twonn"], result["cka"])
    print("\n" + format_targets(result["targets"]), flush=True)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
