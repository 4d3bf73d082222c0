"""bench_training.py --reference: locallearn beside anokland/local-loss's train.py (the
authors' PredSim trainer, a checkout the user provides), same model, data, batch and
epochs, in one call, with the share of the machine's GEMM throughput each reaches.

The configuration is the issue-17 one: the 3 × 1024 MLP on Fashion-MNIST with the paper's
augmentation (2-pixel crop, horizontal flip), batch norm, Adam at 5e-4, batch 128. Each
rule runs as the reference (train.py through reference_local_loss.py), as locallearn
eager and as locallearn --compile, in alternating rounds; throughput is the last epoch's
(training time only: the reference's train() loop, locallearn's train_seconds), so a
compiled run's first-epoch compilation is excluded; the table gives the median over rounds.

The GEMM bound: one training step of each rule is run under a dispatch mode that records
every matrix product (shapes, dtypes, transposed operands); the same products are then
timed alone on fresh random matrices (median of repeats; the median of 5 alternating rounds
over the rules) in the same process and run.
Their sum is the step's time if the machine did nothing but its GEMMs at the speed it does
them; images/s ÷ (batch ÷ that time) is the share of it a trainer reaches.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from locallearn import engine
from locallearn.data.files import find_files, search_directories
from locallearn.data.mnist import FILE_NAMES, SYSTEM_DIRECTORIES, TORCHVISION_FOLDERS
from locallearn.models import build_model
from locallearn.rules import build_rule, default_activation, default_batch_norm

REFERENCE_RULES = {
    "predsim": ["--loss-sup", "predsim", "--nonlin", "leakyrelu"],
    "pred": ["--loss-sup", "pred"],
    "sim": ["--loss-sup", "sim", "--nonlin", "leakyrelu"],
    "backprop": ["--backprop"],
}
"""train.py's flags for each rule locallearn shares with it (nonlinearities as seed 004 §4)."""
WIDTH, DEPTH, BATCH, LR = 1024, 3, 128, 5e-4
RUNNER = Path(__file__).with_name("reference_local_loss.py")


def stage_fashion_mnist(data_dir: str | None, into: Path) -> Path:
    """torchvision's layout (FashionMNIST/raw/ with the files unzipped) under ``into``,
    from the Fashion-MNIST files locallearn finds (the same search as ``--data-dir``); the
    working directory train.py must run in (it reads ../data/FashionMNIST)."""
    directories = search_directories("fashion-mnist", data_dir, [TORCHVISION_FOLDERS["fashion-mnist"]],
                                     SYSTEM_DIRECTORIES["fashion-mnist"])
    raw = into / "data" / "FashionMNIST" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, found in zip(FILE_NAMES, find_files("fashion-mnist", FILE_NAMES, directories, suffixes=("", ".gz"))):
        opener = gzip.open if found.suffix == ".gz" else open
        with opener(found, "rb") as read, open(raw / name, "wb") as write:
            shutil.copyfileobj(read, write)
    workdir = into / "run"
    workdir.mkdir()
    return workdir


def run_reference(train_py: Path, rule: str, epochs: int, device: str, workdir: Path) -> dict:
    """One train.py run; the last epoch's images/s and its test error (train.py's %)."""
    command = [sys.executable, str(RUNNER), str(train_py.resolve()), "--", "--dataset", "FashionMNIST", "--model", "mlp",
               "--num-layers", str(DEPTH), "--num-hidden", str(WIDTH), "--batch-size", str(BATCH),
               "--epochs", str(epochs), "--lr", str(LR), "--lr-decay-milestones", str(10 * epochs),
               "--no-print-stats", "--save-dir", str(workdir / "saved"), *REFERENCE_RULES[rule],
               *(["--no-cuda"] if device == "cpu" else [])]
    completed = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"the reference's train.py failed for {rule} (exit {completed.returncode}):\n"
                         f"{completed.stderr[-3000:]}")
    epochs_timed = [json.loads(line.split(" ", 1)[1]) for line in completed.stdout.splitlines()
                    if line.startswith("REFERENCE_EPOCH ")]
    test_errors = [float(match) for match in re.findall(r"Test loss_global=\S+ error=([0-9.]+)%", completed.stdout)]
    if len(epochs_timed) != epochs or len(test_errors) != epochs:
        raise SystemExit(f"could not read train.py's {epochs} epochs from its output:\n{completed.stdout[-2000:]}")
    return {"images_per_s": 60000 / epochs_timed[-1]["train_seconds"], "test_error": test_errors[-1] / 100}


def run_ours(rule: str, epochs: int, device: str, data_dir: str | None, compiled: bool, run_dir: Path) -> dict:
    """One ``locallearn train`` in its own process; the last epoch's images/s and test error.
    No learning-rate decay within the epochs, as for the reference."""
    command = [sys.executable, "-m", "locallearn.cli", "train", "--rule", rule, "--data", "fashion-mnist",
               "--model", "mlp", "--width", str(WIDTH), "--depth", str(DEPTH), "--batch-size", str(BATCH),
               "--lr", str(LR), "--lr-decay", "1", "--epochs", str(epochs), "--device", device,
               "--log-every", str(10**6), "--run-dir", str(run_dir), "--no-progress",
               *(["--data-dir", data_dir] if data_dir else []), *(["--compile"] if compiled else [])]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"locallearn train failed for {rule}:\n{completed.stderr[-3000:]}")
    last = [record for record in engine.read_metrics(run_dir) if record["kind"] == "epoch"][-1]
    return {"images_per_s": last["images_per_s"], "test_error": last["test_error"]}


class GemmRecorder(TorchDispatchMode):
    """Records every matrix product a step dispatches: (m, k, n, dtype, a transposed, b transposed)."""

    PRODUCTS = {"aten::mm", "aten::addmm"}

    def __init__(self) -> None:
        super().__init__()
        self.products: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in self.PRODUCTS:
            a, b = (args[0], args[1]) if name == "aten::mm" else (args[1], args[2])
            self.products.append((a.shape[0], a.shape[1], b.shape[1], a.dtype, a.stride(0) == 1 and a.shape[1] > 1,
                                  b.stride(0) == 1 and b.shape[1] > 1))
        return func(*args, **(kwargs or {}))


def step_gemms(rule_name: str, device: str) -> list[tuple]:
    """The matrix products of one training step of ``rule_name`` on the benchmark's MLP."""
    model = build_model("mlp", (1, 28, 28), 10, depth=DEPTH, width=WIDTH, activation=default_activation(rule_name),
                        batch_norm=default_batch_norm(rule_name)).to(device)
    rule = build_rule(rule_name, model, lr=LR)
    x, y = torch.randn(BATCH, 1, 28, 28, device=device), torch.randint(10, (BATCH,), device=device)
    rule.train_step(x, y)
    with GemmRecorder() as recorder:
        rule.train_step(x, y)
    return recorder.products


def gemm_seconds(products: list[tuple], device: str, repeats: int = 30) -> float:
    """The summed median time of ``products``, each on fresh random matrices."""
    total = 0.0
    for m, k, n, dtype, a_transposed, b_transposed in products:
        a = torch.randn(k, m, device=device, dtype=dtype).t() if a_transposed else torch.randn(m, k, device=device,
                                                                                              dtype=dtype)
        b = torch.randn(n, k, device=device, dtype=dtype).t() if b_transposed else torch.randn(k, n, device=device,
                                                                                              dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        total += statistics.median(times)
    return total


def gemm_bounds(rules: list[str], device: str, rounds: int = 5) -> dict[str, float]:
    """Each rule's GEMM-bound images/s: its step's products timed in ``rounds`` alternating
    rounds, the median round (one busy moment of the machine cannot set the bound)."""
    products = {rule: step_gemms(rule, device) for rule in rules}
    seconds: dict[str, list[float]] = {rule: [] for rule in rules}
    for _ in range(rounds):
        for rule in rules:
            seconds[rule].append(gemm_seconds(products[rule], device))
    return {rule: BATCH / statistics.median(times) for rule, times in seconds.items()}


def compare(train_py: Path, rules: list[str], epochs: int, rounds: int, device: str, data_dir: str | None,
            out_dir: Path) -> dict:
    """Every (rule, trainer) row, median over ``rounds`` alternating rounds, and each rule's GEMM bound."""
    unknown = [rule for rule in rules if rule not in REFERENCE_RULES]
    if unknown:
        raise SystemExit(f"train.py has no equivalent of {', '.join(unknown)}; --reference compares "
                         f"{', '.join(REFERENCE_RULES)}")
    if not train_py.is_file():
        raise SystemExit(f"--reference {train_py}: no such file (a checkout of anokland/local-loss's train.py)")
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    workdir = stage_fashion_mnist(data_dir, Path(tempfile.mkdtemp(prefix="reference-")))
    trainers = {"reference": None, "locallearn": False, "locallearn --compile": True}
    samples: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(rounds):
        for rule in rules:
            for trainer, compiled in trainers.items():
                print(f"round {round_index + 1}/{rounds}: {rule}, {trainer}", flush=True)
                if compiled is None:
                    result = run_reference(train_py, rule, epochs, device, workdir)
                else:
                    run_dir = out_dir / f"{rule}-{'compiled' if compiled else 'eager'}-{round_index}"
                    result = run_ours(rule, epochs, device, data_dir, compiled, run_dir)
                samples.setdefault((rule, trainer), []).append(result)
    bounds = gemm_bounds(rules, device)
    rows = []
    for (rule, trainer), results in samples.items():
        images_per_s = statistics.median(result["images_per_s"] for result in results)
        rows.append({"rule": rule, "trainer": trainer, "images_per_s": images_per_s,
                     "images_per_s_rounds": [result["images_per_s"] for result in results],
                     "test_error": statistics.median(result["test_error"] for result in results),
                     "gemm_bound_images_per_s": bounds[rule], "share_of_gemm_bound": images_per_s / bounds[rule]})
    return {"rows": rows, "epochs": epochs, "rounds": rounds, "batch": BATCH,
            "model": f"mlp {DEPTH}x{WIDTH}", "data": "fashion-mnist"}


def format_comparison(result: dict) -> str:
    rows = {(row["rule"], row["trainer"]): row for row in result["rows"]}
    lines = [f"{result['data']}, {result['model']}, batch {result['batch']}, last of {result['epochs']} epoch(s), "
             f"median of {result['rounds']} round(s)",
             f"{'rule':<10}{'trainer':<22}{'images/s':>10}{'× reference':>13}{'× our backprop':>16}"
             f"{'test error':>12}{'GEMM share':>12}"]
    for (rule, trainer), row in rows.items():
        reference = rows[(rule, "reference")]["images_per_s"]
        backprop = rows.get(("backprop", trainer))
        versus_backprop = (f"{row['images_per_s'] / backprop['images_per_s']:.2f}"
                           if backprop and trainer != "reference" else "")
        lines.append(f"{rule:<10}{trainer:<22}{row['images_per_s']:>10.0f}{row['images_per_s'] / reference:>13.2f}"
                     f"{versus_backprop:>16}{row['test_error']:>12.2%}{row['share_of_gemm_bound']:>12.0%}")
    return "\n".join(lines)
