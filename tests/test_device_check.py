"""tools/device_check.py: the dry run (`make device-check DRY_RUN=1`) runs every step on
the CPU and brings back REPORT.md, the benchmarks' JSON and the log within the device
tool's limits; a failing step is marked with its log tail while the later steps still
run; the budget skips what it cannot fit and kills what overruns; the GPU plan builds
offline for the probed GPU; the report judges the targets from the benchmarks' numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import device_check  # noqa: E402
import device_report  # noqa: E402

MAX_FILES = 8  # what the device tool brings back from $OUT: 8 files, no deeper than $OUT/a/b
NAME = re.compile(r"[A-Za-z0-9._-]+")


def report_rows(report: str) -> dict[str, str]:
    """step name → status, from REPORT.md's table."""
    rows = re.findall(r"^\| ([a-z0-9-]+) \| (ok|FAILED|skipped) \|", report, flags=re.MULTILINE)
    return dict(rows)


def python_step(name: str, code: str, limit_s: float = 60, json_files: tuple[str, ...] = ()) -> device_check.Step:
    return device_check.Step(name, [sys.executable, "-c", code], limit_s, json_files)


def execute(steps, out: Path, budget_s: float = 300) -> int:
    return device_check.execute(steps, out, budget_s, device_check.report_header(True, {"torch": "test"}))


def test_dry_run_runs_every_step_and_brings_back_its_files(tmp_path):
    out = tmp_path / "OUT"
    completed = subprocess.run(["make", "device-check", "DRY_RUN=1", f"OUT={out}", f"PYTHON={sys.executable}"],
                               cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    args = device_check.parse_args(["--out", str(out), "--dry-run"])
    steps = device_check.plan(args, {}, tmp_path)
    report = (out / "REPORT.md").read_text()
    assert report_rows(report) == {step.name: "ok" for step in steps}
    assert f"{len(steps)} ok, 0 FAILED, 0 skipped" in report
    json_files = [name for step in steps for name in step.json_files]
    assert len(json_files) == 6
    for name in json_files:
        json.loads((out / name).read_text())
        assert f"from {name}:" in report
    assert "pytest: " in report and "op calls forward and backward on cpu" in report

    files = [path for path in out.rglob("*") if path.is_file()]
    assert len(files) <= MAX_FILES
    assert {path.name for path in files} == {"REPORT.md", "device_check.log", *json_files}
    for path in files:
        relative = path.relative_to(out)
        assert len(relative.parts) <= 3 and all(NAME.fullmatch(part) for part in relative.parts)


def test_a_failing_step_is_marked_with_its_tail_and_the_later_steps_still_run(tmp_path):
    out = tmp_path / "OUT"
    args = device_check.parse_args(["--out", str(out), "--dry-run"])
    build = next(step for step in device_check.plan(args, {}, tmp_path) if step.name == "build")
    steps = [python_step("exits-3", "print('a first line'); print('the last words'); raise SystemExit(3)"),
             python_step("writes-no-json", "pass", json_files=("promised.json",)),
             build]

    status = execute(steps, out)

    assert status != 0
    report = (out / "REPORT.md").read_text()
    assert report_rows(report) == {"exits-3": "FAILED", "writes-no-json": "FAILED", "build": "ok"}
    assert "## exits-3: FAILED (exit status 3)" in report
    failed_section = report.split("## exits-3")[1].split("## writes-no-json")[0]
    assert "a first line\nthe last words\n```" in failed_section
    assert "exited 0 but wrote no promised.json" in report
    assert "Would install locallearn" in (out / "device_check.log").read_text()


def test_the_budget_kills_an_overrunning_step_and_skips_what_it_cannot_fit(tmp_path):
    out = tmp_path / "OUT"
    steps = [python_step("sleeps", "import time; print('started', flush=True); time.sleep(60)", limit_s=2),
             python_step("needs-a-minute", "pass", limit_s=120)]

    status = execute(steps, out, budget_s=20)

    report = (out / "REPORT.md").read_text()
    assert report_rows(report) == {"sleeps": "FAILED", "needs-a-minute": "skipped"}
    assert "timed out after 2 s (its limit) and was killed" in report
    assert "started" in report.split("## sleeps")[1]
    assert "it needs at least 60 s (half its 120 s limit)" in report
    assert status != 0


def test_the_gpu_plan_builds_offline_for_the_probed_gpu_and_names_the_targets(tmp_path):
    args = device_check.parse_args(["--out", str(tmp_path)])
    steps = {step.name: step for step in device_check.plan(args, {"arch": "9.0"}, tmp_path)}

    build = steps["build"]
    assert build.env == {"TORCH_CUDA_ARCH_LIST": "9.0"}
    assert {"--no-build-isolation", "--no-deps", "--no-index", f"-Cbuild-dir={tmp_path / 'build'}"} <= set(
        build.command)
    assert steps["extension"].command[-2:] == ["--arch", "9.0"]
    for tool in ("memcheck", "racecheck"):
        command = " ".join(steps[tool].command)
        assert f"--tool {tool} --error-exitcode 1" in command and "sanitizer_ops.py --device cuda" in command
    similarity = " ".join(steps["bench-similarity"].command)
    assert "--batches 128 8192 --dims 4096 16384 --dtypes fp32 bf16" in similarity
    assert "--cases imagenet1 imagenet3 --batches 256" in " ".join(steps["bench-locally-connected"].command)
    for rule in ("backprop", "predsim"):
        command = " ".join(steps[f"train-{rule}"].command)
        assert (f"--config configs/vgg8b-fashion-mnist.toml --epochs 1 --rules {rule} --modes eager compile "
                "--data-dir .data") in command

    without_gpu = {step.name: step for step in device_check.plan(args, {"error": "no torch"}, tmp_path)}
    assert "torch sees no CUDA GPU" in without_gpu["build"].unavailable


def test_the_gpu_plan_can_install_a_wheel_instead_of_building(tmp_path):
    wheel = tmp_path / "locallearn-0.1.0+cu130-cp311-abi3-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"")
    args = device_check.parse_args(["--out", str(tmp_path), "--wheel", str(wheel)])
    build = {step.name: step for step in device_check.plan(args, {"arch": "9.0"}, tmp_path)}["build"]
    assert build.command[-1] == str(wheel) and "--no-index" in build.command and "--no-deps" in build.command
    assert build.env == {}
    with pytest.raises(SystemExit):
        device_check.parse_args(["--out", str(tmp_path), "--wheel", str(tmp_path / "missing.whl")])


@pytest.mark.parametrize("arch_list, arch, runs", [
    ("8.0 9.0+PTX", "9.0", True), ("8.0 9.0+PTX", "8.0", True), ("8.0 9.0+PTX", "10.0", True),
    ("8.0 9.0+PTX", "8.6", False), ("8.0 9.0", "10.0", False), ("9.0", "9.0", True), ("9.0+PTX", "8.0", False)])
def test_a_build_serves_its_sass_targets_and_newer_gpus_through_ptx(arch_list, arch, runs):
    assert device_check.builds_for(arch_list, arch) == runs


def test_the_report_judges_the_targets_from_the_benchmarks_numbers(tmp_path):
    row = {"tflops": {"fused": 600.0}, "grad_rel_diff_vs_eager": 1e-6}
    similarity = {"device": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0",
                  "roofline_tflops": {"float32": 50.0, "bfloat16": 790.0},
                  "rows": [{**row, "batch": 128, "dim": 4096, "dtype": "float32",
                            "ms": {"fused": 0.1, "eager": 1.38, "compile": 0.45}},
                           {**row, "batch": 8192, "dim": 16384, "dtype": "bfloat16",
                            "ms": {"fused": 10.0, "eager": 15.2, "compile": 12.0}}]}
    (tmp_path / "bench_similarity.json").write_text(json.dumps(similarity))

    summary = "\n".join(device_report.json_summary("bench_similarity.json", device_report.similarity_numbers,
                                                   judge=True)(tmp_path, []))

    assert "| B=128, D=4096, fp32: × eager | 13.8 | >= 10 | met |" in summary
    assert "| B=128, D=4096, fp32: × torch.compile | 4.5 | >= 5 | **NOT met** |" in summary
    assert "| B=8192, D=16384, bf16: share of the bf16 matmul roofline | 0.759 | >= 0.75 | met |" in summary
    unjudged = device_report.json_summary("bench_similarity.json", device_report.similarity_numbers, judge=False)
    assert "a dry run does not judge them" in "\n".join(unjudged(tmp_path, []))


def test_the_training_report_judges_each_modes_steady_throughput_and_memory(tmp_path):
    def run(rule, mode, steady, peak):
        return {"rule": rule, "mode": mode, "test_error": 0.1, "images_per_s": steady / 2,
                "steady_images_per_s": steady, "peak_memory_mb": peak, "train_seconds": 3.0}

    (tmp_path / "bench_training_backprop.json").write_text(json.dumps(
        {"runs": [run("backprop", "eager", 30_000, 1000.0), run("backprop", "compile", 40_000, 800.0)]}))
    (tmp_path / "bench_training_predsim.json").write_text(json.dumps(
        {"runs": [run("predsim", "eager", 12_000, 600.0), run("predsim", "compile", 24_000, 380.0)]}))

    summary = "\n".join(device_report.json_summary("bench_training_predsim.json", device_report.training_numbers,
                                                   judge=True)(tmp_path, []))

    assert "| predsim steady images/s, eager (issues 3 and 17, on the H200) | 1.2e+04 | >= 20000 | **NOT met** |" in summary
    assert "| predsim steady images/s, compile (issues 3 and 17, on the H200) | 2.4e+04 | >= 20000 | met |" in summary
    assert "| predsim peak memory / backprop's, eager | 0.6 | <= 0.5 | **NOT met** |" in summary
    assert "| predsim peak memory / backprop's, compile | 0.475 | <= 0.5 | met |" in summary
