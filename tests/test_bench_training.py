"""The training benchmarks' machinery: the allocator-level step memory count, the reference
trainer's harness (timing, output parsing, data staging) and the GEMM recorder."""

import gzip
import json
import statistics
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
from helpers import BENCHMARKS, load_benchmark

from locallearn.engine.metrics import read_metrics


def test_cpu_step_peak_counts_the_bytes_live_at_once():
    """x·2 and +1 live together (2 × 4 MB), then the first is freed before ·3."""
    bench = load_benchmark("bench_step_memory")
    x = torch.randn(1000, 1000)

    def step():
        a = x * 2
        b = a + 1
        del a
        c = b * 3
        del b, c

    assert bench.cpu_step_peak(step) == pytest.approx(8_000_000, abs=4096)


def test_step_memory_of_local_rules_against_backprop(tmp_path):
    out = tmp_path / "memory.json"
    result = load_benchmark("bench_step_memory").main(["--model", "mlp", "--input-shape", "1", "8", "8", "--batch",
                                                       "64", "--rules", "predsim", "--device", "cpu",
                                                       "--json", str(out)])
    rows = {row["rule"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"backprop", "predsim"} and result["method"].startswith("CPU allocator")
    assert rows["backprop"]["peak_vs_backprop"] == 1.0
    for row in rows.values():
        assert row["state_mb"] > 0 and row["step_peak_above_state_mb"] > 0


FAKE_TRAIN_PY = textwrap.dedent("""
    import argparse, time
    from tqdm import tqdm
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--progress-bar", action="store_true")
    args, _ = parser.parse_known_args()
    assert args.progress_bar
    assert open("../data/FashionMNIST/FashionMNIST/raw/train-labels-idx1-ubyte", "rb").read() == b"labels"
    for epoch in range(args.epochs):
        bar = tqdm(total=469)
        time.sleep(0.05)
        bar.close()
        print("Test loss_global=0.4000, error={:.3f}%".format(20.0 - epoch))
""")


def test_reference_harness_times_train_loops_and_reads_test_errors(tmp_path):
    reference = load_benchmark("training_reference")
    source = tmp_path / "fashion"
    source.mkdir()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (source / name).write_bytes(b"images")
    with gzip.open(source / "train-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(b"labels")
    workdir = reference.stage_fashion_mnist(str(source), tmp_path / "staged")
    train_py = tmp_path / "train.py"
    train_py.write_text(FAKE_TRAIN_PY)
    result = reference.run_reference(train_py, "predsim", 2, "cpu", workdir)
    assert result["test_error"] == pytest.approx(0.19)
    assert 60000 / 0.5 < result["images_per_s"] < 60000 / 0.05


def test_reference_harness_refuses_rules_train_py_lacks(tmp_path):
    with pytest.raises(SystemExit, match="dtp"):
        load_benchmark("training_reference").compare(tmp_path / "train.py", ["dtp"], 1, 1, "cpu", None, tmp_path)


def test_gemm_recorder_sees_every_product_of_a_step():
    """Backprop on the 3 × 1024 MLP: forward 4 products, backward 4 weight and 3 input gradients."""
    products = load_benchmark("training_reference").step_gemms("backprop", "cpu")
    assert len(products) == 11
    shapes = sorted((m, k, n) for m, k, n, *_ in products)
    assert shapes == sorted([(128, 784, 1024), (128, 1024, 1024), (128, 1024, 1024), (128, 1024, 10),  # forward
                             (10, 128, 1024), (1024, 128, 1024), (1024, 128, 1024), (1024, 128, 784),  # ∂W
                             (128, 10, 1024), (128, 1024, 1024), (128, 1024, 1024)])  # ∂x


def test_config_mode_trains_each_rule_eager_and_compiled_and_reports_steady_throughput(tmp_path):
    """--modes eager compile: one run per rule and mode, each with the JSON's mode and the
    throughput of its step windows after the first (compilation left out)."""
    config = tmp_path / "tiny.toml"
    config.write_text('data = "synthetic"\ntrain-subset = 512\nmodel = "mlp"\ndepth = 1\nwidth = 32\n'
                      'epochs = 1\nbatch-size = 32\nlog-every = 4\n')
    out = tmp_path / "training.json"
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "bench_training.py"), "--config", str(config),
                                "--rules", "backprop", "--modes", "eager", "compile", "--out", str(tmp_path / "runs"),
                                "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(run["rule"], run["mode"]) for run in runs] == [("backprop", "eager"), ("backprop", "compile")]
    for run in runs:
        windows = [record["images_per_s"] for record in read_metrics(Path(run["run_dir"]))
                   if record["kind"] == "step"]
        assert len(windows) == 4 and run["steady_images_per_s"] == statistics.median(windows[1:])
    settings = tomllib.loads((Path(runs[1]["run_dir"]).parent / "settings.toml").read_text())
    assert settings["compile"] is True
    assert "steady" in completed.stdout
