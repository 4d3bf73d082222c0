"""Several rules trained with the same settings, each as a ``locallearn train`` run in
its own process (so that each reports its own peak memory), summarised side by side."""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from locallearn import config
from locallearn.engine.metrics import read_metrics


@dataclass
class RunSummary:
    """A finished run's last test error and its training time, throughput and peak memory.
    ``steady_images_per_s`` is the median throughput of the logged step windows after
    the first one, so without the first steps' warm-up and compilation (None when the
    run logged fewer than two windows)."""

    rule: str
    run_dir: Path
    test_error: float
    train_seconds: float
    images_per_s: float
    peak_memory_mb: float
    steady_images_per_s: float | None = None

    @classmethod
    def from_run_dir(cls, rule: str, run_dir: Path) -> RunSummary:
        records = read_metrics(run_dir)
        epochs = [record for record in records if record["kind"] == "epoch"]
        windows = [record["images_per_s"] for record in records if record["kind"] == "step"][1:]
        seconds = sum(record["train_seconds"] for record in epochs)
        images = sum(record["train_seconds"] * record["images_per_s"] for record in epochs)
        return cls(rule, run_dir, epochs[-1]["test_error"], seconds, images / seconds,
                   max(record["peak_memory_mb"] for record in epochs),
                   statistics.median(windows) if windows else None)


def train_rules(settings: dict, rules: tuple[str, ...], out_dir: Path, progress: bool = True) -> list[RunSummary]:
    """Train each rule with ``settings`` (train flags as TOML keys) into ``out_dir/RULE``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_file = out_dir / "settings.toml"
    settings_file.write_text(config.dump_toml(settings), encoding="utf-8")
    summaries = []
    for rule in rules:
        run_dir = out_dir / rule
        print(f"training {rule} ... (run directory {run_dir})", flush=True)
        command = [sys.executable, "-m", "locallearn.cli", "train", "--config", str(settings_file),
                   "--rule", rule, "--run-dir", str(run_dir)] + ([] if progress else ["--no-progress"])
        completed = subprocess.run(command, stdout=subprocess.DEVNULL)
        if completed.returncode != 0:
            raise RuntimeError(f"the {rule} run failed (exit {completed.returncode}); see the messages above")
        summaries.append(RunSummary.from_run_dir(rule, run_dir))
    return summaries


def format_summaries(summaries: list[RunSummary], settings: dict, device: str) -> str:
    memory = "peak GPU memory" if device == "cuda" else "peak process memory"
    subset = f", {settings['train-subset']} training images" if settings.get("train-subset") else ""
    lines = [f"{settings['data']}{subset}, {settings['model']}, {settings['epochs']} epochs on {device}",
             f"{'rule':<12}{'test error':>12}{'train time':>12}{'images/s':>10}{'steady':>9}{memory:>22}"]
    lines += [f"{row.rule:<12}{row.test_error:>12.2%}{row.train_seconds:>11.1f}s{row.images_per_s:>10.0f}"
              f"{_steady(row):>9}{row.peak_memory_mb:>19.0f} MB" for row in summaries]
    lines.append("steady: images/s of the logged step windows after the first (no warm-up or compilation)")
    lines.append("run directories: " + ", ".join(str(row.run_dir) for row in summaries))
    return "\n".join(lines)


def _steady(row: RunSummary) -> str:
    return "-" if row.steady_images_per_s is None else f"{row.steady_images_per_s:.0f}"
