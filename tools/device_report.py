"""REPORT.md of a device check (tools/device_check.py): a table of the steps, then per
step its command, status, wall time, the key numbers pulled from its JSON file or its
output, and the tail of its log when it failed. Target verdicts are for the targets
docs/BENCHMARKS.md and docs/RESULTS.md state, as ratios measured in the same run.

Reads the JSON files defensively (a benchmark may change its format, or die half-way):
a key that is missing gives a note in the report, never a crash before REPORT.md exists.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

REPORT_NAME = "REPORT.md"
LOG_NAME = "device_check.log"

Lines = list[str]
Target = tuple[str, float | None, str, float]  # what, measured, '>=' or '<=', wanted
Numbers = Callable[[dict, Path], tuple[Lines, list[Target]]]  # a JSON result → lines, targets


# ------------------------------------------------------------------ formatting


def shell_line(step) -> str:
    """The step's command as one could paste it into a shell, environment first."""
    return " ".join([*(f"{key}={shlex.quote(value)}" for key, value in step.env.items()), shlex.join(step.command)])


def fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def ratio(numerator, denominator):
    return numerator / denominator if numerator and denominator else None


def table(header: list[str], rows: list[list[str]]) -> Lines:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def verdicts(entries: list[Target]) -> Lines:
    """A table of the targets with met / NOT met / not measured."""
    rows = []
    for what, value, relation, target in entries:
        met = None if value is None else (value >= target if relation == ">=" else value <= target)
        rows.append([what, fmt(value, ".3g"), f"{relation} {target:g}",
                     "not measured" if met is None else ("met" if met else "**NOT met**")])
    return ["", *table(["target", "measured", "wanted", "verdict"], rows)]


def machine_line(result: dict) -> str:
    """Where a benchmark ran and whether its fused column ran the native kernel."""
    line = f"{result.get('device') or 'cpu'}, torch {result.get('torch')}, CUDA {result.get('cuda')}"
    native = result.get("native", result.get("native_op"))
    if isinstance(native, dict):
        line += f"; native kernel ran: {native.get('ran')}" + (f" ({native['reason']})" if native.get("reason") else "")
    elif native is not None:
        line += f"; native op: {native}"
    return line


# ------------------------------------------------------------------ numbers from a step's output


def no_numbers(out: Path, tail: Lines) -> Lines:
    return []


def pytest_summary(out: Path, tail: Lines) -> Lines:
    counts = [line.strip("= ") for line in tail if re.search(r"\d+ (passed|failed|skipped|deselected|errors?)", line)]
    return [f"pytest: {counts[-1]}"] if counts else ["pytest printed no summary line"]


def sanitizer_summary(out: Path, tail: Lines) -> Lines:
    keep = ("ERROR SUMMARY", "RACECHECK SUMMARY", "op calls forward and backward")
    return [f"- {line.strip('= ')}" for line in tail if any(key in line for key in keep)]


def extension_summary(out: Path, tail: Lines) -> Lines:
    starts = [index for index, line in enumerate(tail) if line.startswith("locallearn ")]
    return ["```text", *tail[starts[0]:], "```"] if starts else []


# ------------------------------------------------------------------ numbers from the benchmarks' JSON


def similarity_numbers(result: dict, out: Path) -> tuple[Lines, list[Target]]:
    rooflines = result["roofline_tflops"]
    rows, cells = {}, []
    for row in result["rows"]:
        ms = row["ms"]
        share = ratio(row["tflops"].get("fused"), rooflines.get(row["dtype"]))
        rows[row["batch"], row["dim"], row["dtype"]] = (ms, share)
        cells.append([str(row["batch"]), str(row["dim"]), row["dtype"], fmt(ms.get("fused"), ".3f"),
                      fmt(ratio(ms.get("eager"), ms.get("fused")), ".1f", "×"),
                      fmt(ratio(ms.get("compile"), ms.get("fused")), ".1f", "×"),
                      fmt(row["tflops"].get("fused"), ".1f"), fmt(share, ".1%"),
                      fmt(row.get("grad_rel_diff_vs_eager"), ".1e")])
    small, _ = rows.get((128, 4096, "float32"), ({}, None))
    _, large_share = rows.get((8192, 16384, "bfloat16"), ({}, None))
    lines = [machine_line(result), "roofline TFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rooflines.items()),
             "", *table(["B", "D", "dtype", "fused ms", "× eager", "× compile", "TFLOP/s", "of roofline",
                         "grad rel. diff"], cells)]
    return lines, [("B=128, D=4096, fp32: × eager", ratio(small.get("eager"), small.get("fused")), ">=", 10),
                   ("B=128, D=4096, fp32: × torch.compile", ratio(small.get("compile"), small.get("fused")), ">=", 5),
                   ("B=8192, D=16384, bf16: share of the bf16 matmul roofline", large_share, ">=", 0.75)]


def locally_connected_numbers(result: dict, out: Path) -> tuple[Lines, list[Target]]:
    rooflines, bandwidth = result["roofline_tflops"], result["roofline_gbps"]
    cells, shares, targets = [], [], []
    for row in result["rows"]:
        ms = row["ms"]
        peaks = {impl: (memory or {}).get("peak_mib") for impl, memory in row["memory"].items()}
        # The time bound is the larger of FLOPs / peak FLOP/s and bytes / peak bandwidth,
        # so the share of it achieved is the larger of the two roofline shares.
        flop_share = ratio(row["tflops"].get("fused"), rooflines.get(row["dtype"]))
        byte_share = ratio(row["gbps"].get("fused"), bandwidth)
        share = max(flop_share or 0, byte_share or 0) or None
        shares.append(share)
        memory_ratio = ratio(peaks.get("fused"), peaks.get("eager"))
        cells.append([row["case"], row["mode"], str(row["batch"]), row["dtype"], fmt(ms.get("fused"), ".3f"),
                      fmt(ratio(ms.get("eager"), ms.get("fused")), ".1f", "×"),
                      fmt(ratio(ms.get("compile"), ms.get("fused")), ".1f", "×"), fmt(share, ".1%"),
                      fmt(peaks.get("fused"), ".0f"), fmt(peaks.get("eager"), ".0f"),
                      fmt(row.get("rel_diff_vs_eager"), ".1e")])
        if (row["case"] in ("imagenet1", "imagenet3") and row["mode"] == "forward+backward" and row["batch"] == 256
                and row["dtype"] == "float32"):
            targets += [(f"{row['case']}, batch 256, fp32, fwd+bwd: × eager", ratio(ms.get("eager"), ms.get("fused")),
                         ">=", 10),
                        (f"{row['case']}, batch 256, fp32, fwd+bwd: peak memory / eager's", memory_ratio, "<=", 0.25)]
    measured = [share for share in shares if share is not None]
    targets.append(("every case: share of its roofline bound (the lowest)", min(measured) if measured else None,
                    ">=", 0.5))
    train = result.get("training_step") or {}
    lines = [machine_line(result), f"roofline: {', '.join(f'{k} {v:.1f} TFLOP/s' for k, v in rooflines.items())}, "
             f"copy {bandwidth:.0f} GB/s", "",
             *table(["case", "mode", "batch", "dtype", "fused ms", "× eager", "× compile", "of bound",
                     "peak MiB fused", "peak MiB eager", "rel. diff"], cells)]
    if train:
        lines += ["", f"training step, {train.get('model')} {tuple(train.get('input_shape', ()))} batch "
                      f"{train.get('batch')}, {train.get('rule')}: {fmt(train.get('ms'), '.1f', ' ms')}, "
                      f"peak {fmt(train.get('peak_gb'), '.2f', ' GB')}"]
        if train.get("batch") == 256:
            targets.append(("lc-imagenet training step, batch 256: peak GB", train.get("peak_gb"), "<=", 16))
    return lines, targets


def training_numbers(result: dict, out: Path) -> tuple[Lines, list[Target]]:
    runs = result["runs"]
    cells = [[run["rule"], run.get("mode", "eager"), fmt(run["test_error"], ".2%"), fmt(run["images_per_s"], ",.0f"),
              fmt(run.get("steady_images_per_s"), ",.0f"), fmt(run["peak_memory_mb"], ",.0f"),
              fmt(run["train_seconds"], ".1f")] for run in runs]
    lines = [f"{result.get('device') or 'cpu'}, torch {result.get('torch')}, CUDA {result.get('cuda')}; "
             f"settings {json.dumps(result.get('settings'))}", "",
             *table(["rule", "mode", "test error", "images/s", "steady images/s", "peak memory MB", "train s"], cells)]
    predsim_runs = [run for run in runs if run["rule"] == "predsim"]
    if not predsim_runs:
        return lines, []
    backprop = load_json(out / "bench_training_backprop.json")
    backprop_peaks = {run.get("mode", "eager"): run["peak_memory_mb"]
                      for run in (backprop or {}).get("runs", []) if run["rule"] == "backprop"}
    lines += ["", "Steady images/s leave out the first logged window (warm-up and compilation); the throughput "
                  "targets are judged on them. The test-error targets are for 3 epochs and are not judged after 1."]
    targets = []
    for run in predsim_runs:
        mode = run.get("mode", "eager")
        targets += [(f"predsim steady images/s, {mode} (issues 3 and 17, on the H200)",
                     run.get("steady_images_per_s"), ">=", 20_000),
                    (f"predsim peak memory / backprop's, {mode}",
                     ratio(run["peak_memory_mb"], backprop_peaks.get(mode)), "<=", 0.5)]
    return lines, targets


def dfa_memory_numbers(result: dict, out: Path) -> tuple[Lines, list[Target]]:
    cases: dict[str, dict] = {}
    for layer in result["layers"]:
        case = cases.setdefault(layer["case"], {"layers": 0, "K": layer["num_classes"], "stored": 0, "generated": 0})
        case["layers"] += 1
        case["stored"] += layer["stored_bytes"]
        case["generated"] = max(case["generated"], layer["generated_measured_bytes"])
    cells = [[name, str(case["layers"]), str(case["K"]), f"{case['stored'] / 2**20:,.1f}",
              f"{case['generated'] / 2**20:,.1f}"] for name, case in cases.items()]
    return [f"{result.get('device')}, torch {result.get('torch')}, batch {result.get('batch')}, "
            f"chunk {result.get('chunk')}", "",
            *table(["case", "layers", "K", "stored, all layers MiB", "generated, peak MiB"], cells)], []


def analysis_numbers(result: dict, out: Path) -> tuple[Lines, list[Target]]:
    twonn = [[str(row["n"]), str(row["d"]), fmt(row["ms"].get("torch"), ".1f"), fmt(row["ms"].get("naive"), ".1f"),
              fmt(row.get("floor_ms"), ".1f"), row.get("skipped") or "; ".join(row.get("notes", []))]
             for row in result["twonn"]]
    cka = [[str(row["n"]), fmt(row["ms"].get("batched"), ".1f"), fmt(row["ms"].get("loop"), ".1f"),
            row.get("estimator", "")] for row in result["cka"]]
    lines = [machine_line(result), "", *table(["TwoNN N", "D", "torch ms", "naive ms", "floor ms", "notes"], twonn),
             "", *table(["CKA N", "batched ms", "per-pair loop ms", "estimator"], cka)]
    return lines, [(target["what"].strip(), target["measured"], target["relation"], target["target"])
                   for target in result["targets"]]


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def json_summary(json_name: str, numbers: Numbers, judge: bool) -> Callable[[Path, Lines], Lines]:
    """A step summary that pulls ``numbers`` out of the step's JSON file in the out
    folder; with ``judge`` False (a dry run) the GPU targets are not judged."""

    def summarise(out: Path, tail: Lines) -> Lines:
        result = load_json(out / json_name)
        if result is None:
            return [f"no readable {json_name}"]
        try:
            lines, targets = numbers(result, out)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            return [f"{json_name}: could not read its key numbers ({type(error).__name__}: {error})"]
        if targets and not judge:
            lines += ["", "Targets are for the GPU; a dry run does not judge them."]
        return [f"from {json_name}:", "", *lines, *(verdicts(targets) if judge and targets else [])]

    return summarise


JSON_NUMBERS: dict[str, Numbers] = {
    "bench_similarity.py": similarity_numbers,
    "bench_locally_connected.py": locally_connected_numbers,
    "bench_dfa_memory.py": dfa_memory_numbers,
    "bench_analysis.py": analysis_numbers,
    "bench_training.py": training_numbers,
}


# ------------------------------------------------------------------ the report


def render(steps: list, outcomes: list, out: Path, header: dict) -> str:
    probe = header["probe"]
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in ("ok", "FAILED", "skipped")}
    machine = (f"{probe.get('gpu') or 'no GPU visible'}; torch {probe.get('torch')}, CUDA {probe.get('cuda')}"
               + (f", architecture {probe['arch']}" if probe.get("arch") else "")) if "torch" in probe else probe
    lines = [f"# locallearn device check, {header['date']}", "",
             f"- mode: {header['mode']}", f"- machine: {machine}",
             f"- wall time: {header['wall_s']:.0f} s of a {header['budget_s']:.0f} s budget",
             f"- steps: {counts['ok']} ok, {counts['FAILED']} FAILED, {counts['skipped']} skipped",
             f"- full output of every step: {LOG_NAME}", ""]
    lines += table(["step", "status", "wall s", "limit s", "reason"],
                   [[step.name, outcome.status, f"{outcome.seconds:.1f}", f"{step.limit_s:.0f}", outcome.reason]
                    for step, outcome in zip(steps, outcomes)])
    for step, outcome in zip(steps, outcomes):
        lines += ["", f"## {step.name}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""), "",
                  f"`{shell_line(step)}`", "",
                  f"wall time {outcome.seconds:.1f} s, limit {step.limit_s:.0f} s"]
        if outcome.status != "skipped":
            numbers = step.summarise(out, outcome.tail)
            lines += ["", *numbers] if numbers else []
        if outcome.status == "FAILED" and outcome.tail:
            lines += ["", f"last {len(outcome.tail)} lines of its output:", "", "```text", *outcome.tail, "```"]
    lines += ["", "## files", "", f"- {REPORT_NAME} (this report)",
              *(f"- {path.name} ({path.stat().st_size:,} bytes)" for path in sorted(out.iterdir())
                if path.is_file() and path.name != REPORT_NAME), ""]
    return "\n".join(lines)
