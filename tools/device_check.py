"""The whole GPU side of locallearn in one command, for the rare lent GPU machine:
build for the local GPU, the CUDA tests, compute-sanitizer over every op, every
benchmark on a reduced grid that keeps the targets' configurations, one training
epoch per rule; then REPORT.md, the benchmarks' JSON files and one combined log in
--out. A failing step is marked and the next one runs; each step has a time limit and
the whole run a wall budget. Exits non-zero if a step failed, after REPORT.md is written.

    python3 tools/device_check.py --out $OUT                  # on the GPU machine
    python3 tools/device_check.py --out /tmp/dc --dry-run     # on a CPU: tiny sizes, no sanitizer

docs/device_check.md describes the steps, their limits and what comes back.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import device_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 480.0
DEFAULT_DATA_DIR = ".data"
TAIL_LINES = 60
TRAINING_RULES = ("backprop", "predsim")
TRAINING_CONFIG = "configs/vgg8b-fashion-mnist.toml"
# The dry run's training settings: VGG8B at 1/16 of its width on 128 synthetic images.
DRY_RUN_TRAINING = {"data": "synthetic", "train-subset": 128, "model": "vgg8b", "width-multiplier": 0.0625,
                    "epochs": 1, "batch-size": 64, "augment": True}
# Every kernel in csrc/kernels lives in namespace locallearn::kernels, whose mangled
# names contain this; compute-sanitizer then checks those kernels and not torch's.
SANITIZER_KERNEL_FILTER = "kns=10locallearn7kernels"
SANITIZER_LOCATIONS = ("/usr/local/cuda/bin/compute-sanitizer",
                       "/usr/local/cuda/compute-sanitizer/compute-sanitizer")


@dataclasses.dataclass
class Step:
    """One command of the check, run from the repository root."""

    name: str
    command: list[str]
    limit_s: float
    json_files: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    summarise: Callable[[Path, list[str]], list[str]] = device_report.no_numbers
    unavailable: str | None = None  # why it cannot run here: then it is FAILED without running
    not_selected: bool = False  # left out by --steps: then it is skipped


@dataclasses.dataclass
class Outcome:
    status: str  # "ok", "FAILED" or "skipped"
    reason: str
    seconds: float
    tail: list[str]


# ------------------------------------------------------------------ the steps


def benchmark_steps(python: str, out: Path, dry_run: bool) -> dict[str, Step]:
    """name → the benchmark's step: its reduced GPU grid (the targets of
    docs/BENCHMARKS.md included) or, in a dry run, a tiny CPU grid."""
    grids = {  # name: (script, limit s, GPU arguments, dry-run arguments)
        "bench-similarity": ("bench_similarity.py", 180,
                             "--batches 128 8192 --dims 4096 16384 --dtypes fp32 bf16 --repeats 20 --warmup 5",
                             "--device cpu --batches 16 33 --dims 8 --dtypes fp32 --repeats 3 --warmup 1 "
                             "--input-sets 2 --roofline-size 64 --no-compile"),
        "bench-locally-connected": ("bench_locally_connected.py", 240,
                                    "--cases imagenet1 imagenet3 --batches 256 --dtypes fp32 bf16 --repeats 10 "
                                    "--warmup 3",
                                    "--device cpu --quick --no-compile --cases cifar3 --repeats 1 --warmup 1 "
                                    "--train-batch 2 --train-repeats 1"),
        "bench-dfa-memory": ("bench_dfa_memory.py", 90,
                             "--cases vgg8b-cifar10 imagenet-64x112x112 vgg8b-imagenet --batch 128",
                             "--cases vgg8b-cifar10 --batch 4 --chunk 1024"),
        "bench-analysis": ("bench_analysis.py", 180,
                           "--ns 100000 1000000 --dims 1024 --cka-ns 10000 100000 --case-seconds 1",
                           "--device cpu --quick --ns 1000 --dims 32 --cka-ns 300 --cka-minibatch-from 300 "
                           "--cka-batch-size 100 --cka-loop-max-n 300 --case-seconds 0.1 --roofline-size 128 "
                           "--no-skdim"),
    }
    steps = {}
    for name, (script, limit, gpu_arguments, dry_arguments) in grids.items():
        json_name = script.replace(".py", ".json")
        arguments = (dry_arguments if dry_run else gpu_arguments).split()
        steps[name] = Step(name, [python, f"benchmarks/{script}", *arguments, "--json", str(out / json_name)],
                           limit, (json_name,),
                           summarise=device_report.json_summary(json_name, device_report.JSON_NUMBERS[script],
                                                                judge=not dry_run))
    return steps


def training_steps(python: str, out: Path, work: Path, data_dir: str, dry_run: bool) -> list[Step]:
    """One epoch of VGG8B per rule, eager and through --compile, each rule its own
    bench_training.py run so that one rule's failure keeps the other's numbers."""
    if dry_run:
        config = work / "dry-run-training.toml"
        config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in DRY_RUN_TRAINING.items()))
        data_arguments, modes = [], ["eager"]  # compiling VGG8B takes minutes on a CPU; tests/test_bench_training.py compiles
    else:
        config, data_arguments, modes = TRAINING_CONFIG, ["--data-dir", data_dir], ["eager", "compile"]
    steps = []
    for rule in TRAINING_RULES:
        json_name = f"bench_training_{rule}.json"
        command = [python, "benchmarks/bench_training.py", "--config", str(config), "--epochs", "1", "--rules", rule,
                   "--modes", *modes, *data_arguments, "--out", str(work / "runs"), "--json", str(out / json_name)]
        summarise = device_report.json_summary(json_name, device_report.JSON_NUMBERS["bench_training.py"],
                                               judge=not dry_run)
        steps.append(Step(f"train-{rule}", command, 300, (json_name,), summarise=summarise))
    return steps


def sanitizer_steps(python: str, dry_run: bool, sanitizer: str | None) -> list[Step]:
    """memcheck and racecheck over tools/sanitizer_ops.py; a dry run runs the script alone."""
    device = "cpu" if dry_run else "cuda"
    script = [python, "tools/sanitizer_ops.py", "--device", device]
    steps = []
    for tool in ("memcheck", "racecheck"):
        if dry_run:
            steps.append(Step(tool, script, 60, summarise=device_report.sanitizer_summary))
            continue
        command = [sanitizer or "compute-sanitizer", "--tool", tool, "--error-exitcode", "1",
                   "--kernel-name", SANITIZER_KERNEL_FILTER, *script]
        missing = None if sanitizer else f"compute-sanitizer is not on PATH nor at {', '.join(SANITIZER_LOCATIONS)}"
        # Without the caching allocator every tensor is its own allocation, so an
        # access past a tensor's end is outside any allocation and memcheck sees it.
        steps.append(Step(tool, command, 180, env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
                          summarise=device_report.sanitizer_summary, unavailable=missing))
    return steps


def build_step(python: str, work: Path, dry_run: bool, probe: dict, wheel: Path | None = None) -> Step:
    """pip-builds locallearn from a fresh build folder for the local GPU's architecture, or
    installs ``wheel`` instead, offline and without touching torch; a dry run asks pip what
    it would do instead."""
    if wheel is not None:
        command = [python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel)]
        env = {}
    else:
        command = [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-v",
                   f"-Cbuild-dir={work / 'build'}", "."]
        env = {"TORCH_CUDA_ARCH_LIST": probe.get("arch") or ""}
    if dry_run:
        return Step("build", [*command, "--dry-run"], 60)
    unavailable = None if probe.get("arch") else f"torch sees no CUDA GPU ({probe.get('error') or probe})"
    return Step("build", command, 300, env=env, unavailable=unavailable)


def plan(args, probe: dict, work: Path) -> list[Step]:
    """Every step in the order it runs: the build and the checks first, then the numbers."""
    python, out, dry_run = sys.executable, args.out, args.dry_run
    device = "cpu" if dry_run else "cuda"
    extension = [python, str(Path(__file__).resolve()), "--check-extension", device]
    if not dry_run and probe.get("arch"):
        extension += ["--arch", probe["arch"]]
    benchmarks = benchmark_steps(python, out, dry_run)
    return [
        build_step(python, work, dry_run, probe, args.wheel),
        Step("extension", extension, 60, summarise=device_report.extension_summary),
        Step("pytest-cuda", [python, "-m", "pytest", "-m", "cuda", "-q", "--tb=short"], 240,
             summarise=device_report.pytest_summary),
        *sanitizer_steps(python, dry_run, find_sanitizer()),
        benchmarks["bench-similarity"],
        benchmarks["bench-locally-connected"],
        *training_steps(python, out, work, args.data_dir, dry_run),
        benchmarks["bench-dfa-memory"],
        benchmarks["bench-analysis"],
    ]


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    return found or next((path for path in SANITIZER_LOCATIONS if os.access(path, os.X_OK)), None)


def probe_torch(python: str) -> dict:
    """torch's version, CUDA version, GPU name and architecture ('9.0'), from a child
    process so that this one never holds a CUDA context."""
    code = ("import json, torch; gpu = torch.cuda.is_available(); cap = torch.cuda.get_device_capability() if gpu "
            "else None; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
            "'gpu': torch.cuda.get_device_name() if gpu else None, 'arch': '%d.%d' % cap if cap else None}))")
    try:
        completed = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"error": "asking torch about the GPU took over 120 s"}
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no message"])[-1]
        return {"error": f"asking torch about the GPU failed: {last}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ running


def run_step(step: Step, log, remaining_s: float, out: Path) -> Outcome:
    """Runs ``step`` within min(its limit, what is left of the budget), streaming its
    output to stdout and the log; skips it when less than half its limit is left."""
    not_run = outcome_without_running(step, remaining_s)
    if not_run:
        return not_run
    timeout = min(step.limit_s, remaining_s)
    log.write(f"\n===== {step.name}: {device_report.shell_line(step)}\n")
    log.flush()
    print(f"\n[device-check] {step.name} (limit {timeout:.0f} s): {device_report.shell_line(step)}", flush=True)
    begin = time.monotonic()
    try:
        process = subprocess.Popen(step.command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **step.env},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                   start_new_session=True)
    except OSError as error:
        return Outcome("FAILED", f"could not start: {error}", 0.0, [])
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=copy_output, args=(process.stdout, log, tail, step.name), daemon=True)
    reader.start()
    try:
        code, reason = process.wait(timeout), None
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # its whole group: sanitizer targets, training runs
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        limit = "its limit" if timeout == step.limit_s else "the rest of the budget"
        reason = f"timed out after {timeout:.0f} s ({limit}) and was killed"
    reader.join(timeout=10)
    seconds = time.monotonic() - begin
    if reason is None and code != 0:
        reason = f"exit status {code}"
    if reason is None:
        reason = missing_json(step, out)
    return Outcome("FAILED" if reason else "ok", reason or "", seconds, list(tail))


def outcome_without_running(step: Step, remaining_s: float) -> Outcome | None:
    """Skipped (left out by --steps, or too little budget left) or FAILED (it cannot run
    here); None when the step should run."""
    if step.not_selected:
        return Outcome("skipped", "not selected with --steps", 0.0, [])
    if step.unavailable:
        return Outcome("FAILED", step.unavailable, 0.0, [])
    if remaining_s < step.limit_s / 2:
        return Outcome("skipped", f"only {remaining_s:.0f} s of the budget left; it needs at least "
                                  f"{step.limit_s / 2:.0f} s (half its {step.limit_s:.0f} s limit)", 0.0, [])
    return None


def copy_output(stream, log, tail: collections.deque, name: str) -> None:
    for line in stream:
        log.write(line)
        tail.append(line.rstrip("\n"))
        sys.stdout.write(f"[{name}] {line}")
    log.flush()
    sys.stdout.flush()


def missing_json(step: Step, out: Path) -> str | None:
    """Why a step that exited 0 still failed: a JSON file it should have written is absent or unreadable."""
    for name in step.json_files:
        path = out / name
        if not path.is_file():
            return f"exited 0 but wrote no {name}"
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            return f"{name} is not valid JSON: {error}"
    return None


def execute(steps: list[Step], out: Path, budget_s: float, header: dict, started: float | None = None) -> int:
    """Runs ``steps`` in order into ``out`` within ``budget_s`` seconds from ``started``
    (a time.monotonic(); default now), writes REPORT.md and the combined log there;
    returns 1 if a step failed, else 0."""
    started = time.monotonic() if started is None else started
    out.mkdir(parents=True, exist_ok=True)
    for stale in [device_report.REPORT_NAME, device_report.LOG_NAME, *(n for s in steps for n in s.json_files)]:
        (out / stale).unlink(missing_ok=True)
    outcomes = []
    with open(out / device_report.LOG_NAME, "w", encoding="utf-8") as log:
        for step in steps:
            outcome = run_step(step, log, budget_s - (time.monotonic() - started), out)
            outcomes.append(outcome)
            print(f"[device-check] {step.name}: {outcome.status} {outcome.reason} ({outcome.seconds:.1f} s)".rstrip(),
                  flush=True)
    header = {**header, "wall_s": time.monotonic() - started, "budget_s": budget_s}
    report = device_report.render(steps, outcomes, out, header)
    (out / device_report.REPORT_NAME).write_text(report, encoding="utf-8")
    failed = [step.name for step, outcome in zip(steps, outcomes) if outcome.status == "FAILED"]
    print(f"\n[device-check] REPORT.md written to {out}; "
          + (f"FAILED: {', '.join(failed)}" if failed else "no step failed"), flush=True)
    return 1 if failed else 0


def report_header(dry_run: bool, probe: dict) -> dict:
    """What REPORT.md says first: the mode, the machine (``probe``) and the date."""
    return {"mode": "dry run on the CPU" if dry_run else "GPU", "probe": probe,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------ the extension check


def check_extension(device_type: str, arch: str | None) -> int:
    """Prints `locallearn info`; fails unless locallearn._C imports, serves
    ``device_type`` with a native kernel of every op and, given ``arch``, was built for it."""
    import locallearn._C as extension
    import torch
    from sanitizer_ops import require_native

    from locallearn import info

    print(info.report(), flush=True)
    print(f"locallearn._C with_cuda={extension.with_cuda} cuda_arch_list={extension.cuda_arch_list!r}")
    if device_type == "cuda" and not extension.with_cuda:
        print("locallearn._C was built without CUDA")
        return 1
    require_native(torch.device(device_type))
    if arch and not builds_for(extension.cuda_arch_list, arch):
        print(f"locallearn._C was built for {extension.cuda_arch_list!r}, not this GPU's {arch}")
        return 1
    return 0


def builds_for(arch_list: str, arch: str) -> bool:
    """Whether a build for ``arch_list`` ("8.0 9.0+PTX") runs on a GPU of ``arch`` ("9.0"):
    SASS for it, or PTX of an architecture no newer, which the driver compiles."""
    def number(text: str) -> tuple[int, int]:
        major, minor = text.split(".")
        return int(major), int(minor)

    entries = arch_list.split()
    return any(entry.removesuffix("+PTX") == arch for entry in entries) or any(
        entry.endswith("+PTX") and number(entry.removesuffix("+PTX")) <= number(arch) for entry in entries)


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for REPORT.md, the JSON files and the log ($OUT)")
    parser.add_argument("--dry-run", action="store_true",
                        help="every step on the CPU at tiny sizes, the sanitizer steps without compute-sanitizer")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="wall-clock budget of all steps in seconds (default %(default)g)")
    parser.add_argument("--steps", nargs="+", metavar="STEP", help="run only these steps (the others are skipped)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="where Fashion-MNIST's files are for the training steps (default %(default)s)")
    parser.add_argument("--wheel", type=Path,
                        help="install this locallearn wheel (make wheel's CUDA one) instead of building from source")
    parser.add_argument("--check-extension", choices=("cpu", "cuda"), help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_extension is None and not args.out:
        parser.error("--out is required (make device-check OUT=DIR)")
    args.out = Path(args.out).resolve() if args.out else None
    if args.wheel is not None:
        if not args.wheel.is_file():
            parser.error(f"--wheel {args.wheel}: no such file")
        args.wheel = args.wheel.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_extension:
        return check_extension(args.check_extension, args.arch)
    started = time.monotonic()
    probe = probe_torch(sys.executable)
    with tempfile.TemporaryDirectory(prefix="device-check-") as work:
        steps = plan(args, probe, Path(work))
        if args.steps:
            unknown = sorted(set(args.steps) - {step.name for step in steps})
            if unknown:
                raise SystemExit(f"unknown step(s) {', '.join(unknown)}; the steps: "
                                 + ", ".join(step.name for step in steps))
            for step in steps:
                step.not_selected = step.name not in args.steps
        return execute(steps, args.out, args.budget, report_header(args.dry_run, probe), started)


if __name__ == "__main__":
    sys.exit(main())
