"""Before/after speed of two builds of locallearn on one machine: runs one benchmark of
benchmarks/ under two Pythons (each with its own build installed) in alternating rounds
(before, after, after, before, ...: drift hits both alike) and prints, for every row, the
median over rounds of each build's fused-op time and their ratio. The eager column is the
same PyTorch code in both builds, so its ratio shows the machine's own noise.

Two builds cannot share one process (both register the `locallearn` ops), hence rounds.

    python tools/compare_builds.py --before .venv/bin/python --after ../wt/.venv/bin/python \\
        --rounds 6 --json compare.json -- benchmarks/bench_similarity.py --device cpu --no-compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURED = ("ms", "memory", "tflops", "gbps", "rel_diff_vs_eager", "grad_rel_diff_vs_eager", "model_tflop",
            "model_gb", "layer")


def row_key(row: dict) -> tuple:
    """What identifies a benchmark row: every field that is not a measurement."""
    return tuple(sorted((name, value) for name, value in row.items() if name not in MEASURED))


def run_once(python: str, benchmark: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "run.json"
        subprocess.run([python, *benchmark, "--json", str(output)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(output.read_text())


def order(rounds: int) -> list[str]:
    """before, after, after, before, before, after, ...: each build runs first as often."""
    pattern = ["before", "after", "after", "before"]
    return [pattern[i % 4] for i in range(2 * rounds)]


def compare(runs: dict[str, list[dict]]) -> list[dict]:
    times: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    for build, results in runs.items():
        for result in results:
            for row in result["rows"]:
                per_build = times.setdefault(row_key(row), {"before": {}, "after": {}})[build]
                for column, ms in row["ms"].items():
                    if ms is not None:
                        per_build.setdefault(column, []).append(ms)
    table = []
    for key, per_build in times.items():
        entry = {"row": dict(key)}
        for column in ("fused", "eager"):
            before = statistics.median(per_build["before"].get(column) or [float("nan")])
            after = statistics.median(per_build["after"].get(column) or [float("nan")])
            entry[column] = {"before_ms": before, "after_ms": after, "after_over_before": after / before}
        table.append(entry)
    return table


def describe(row: dict) -> str:
    return " ".join(str(value) for name, value in row.items() if name not in ("benchmark",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="Python of the environment with the earlier build")
    parser.add_argument("--after", required=True, help="Python of the environment with the later build")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each build (default %(default)s)")
    parser.add_argument("--json", type=Path, help="write the table and every run here")
    parser.add_argument("benchmark", nargs=argparse.REMAINDER, help="-- benchmarks/<name>.py and its arguments")
    args = parser.parse_args()
    benchmark = args.benchmark[1:] if args.benchmark[:1] == ["--"] else args.benchmark
    if not benchmark:
        parser.error("name the benchmark after --")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    pythons = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for index, build in enumerate(order(args.rounds), 1):
        print(f"run {index}/{2 * args.rounds}: {build}", file=sys.stderr, flush=True)
        runs[build].append(run_once(pythons[build], benchmark))
    table = compare(runs)
    print(f"{'row':<44} {'fused before':>12} {'after':>9} {'ratio':>6}   {'eager ratio (noise)':>19}")
    for entry in table:
        fused, eager = entry["fused"], entry["eager"]
        print(f"{describe(entry['row']):<44} {fused['before_ms']:>10.2f}ms {fused['after_ms']:>7.2f}ms "
              f"{fused['after_over_before']:>6.3f}   {eager['after_over_before']:>19.3f}")
    ratios = [entry["fused"]["after_over_before"] for entry in table]
    print(f"fused after/before: median {statistics.median(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} rows")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "machine": runs["after"][0].get("device"),
                                         "table": table, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
