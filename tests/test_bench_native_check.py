"""A benchmark's fused column needs proof, from the profiler, that the native ops ran
(benchmarks/common.NativeCheck): without it a benchmark stops and says why, or with
--allow-reference times the other implementations alone and records why."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import BENCHMARKS, load_benchmark, random_features, random_labels

import locallearn
from locallearn import _native
from locallearn.ops import reference

common = load_benchmark("common")
CPU = torch.device("cpu")
SIMILARITY_OPS = ("similarity_matching_loss", "similarity_matching_loss_backward")
SIMILARITY_SMOKE = ["--device", "cpu", "--batches", "16", "--dims", "8", "--dtypes", "fp32", "--repeats", "2",
                    "--warmup", "1", "--input-sets", "2", "--roofline-size", "64", "--no-compile"]
LC_SMOKE = ["--device", "cpu", "--quick", "--cases", "cifar1", "--modes", "transpose", "--repeats", "2",
            "--no-compile"]
NOT_BUILT_FOR_CPU = "locallearn._C was built without cpu"


def loss_and_backward(loss_fn, generator):
    features = random_features((12, 7), generator).requires_grad_()
    labels = random_labels(12, 3, generator)
    return lambda: loss_fn(features, labels, num_classes=3).backward()


def reference_loss(features, labels, num_classes):
    return reference.similarity_matching_loss(features, labels, None, num_classes)


def test_native_op_and_its_backward_are_seen_to_run(generator):
    check = common.NativeCheck(CPU, allow_reference=False)
    check.call(loss_and_backward(locallearn.similarity_matching_loss, generator), SIMILARITY_OPS)
    assert check.ran
    assert check.record() == {"ran": True, "ops": list(SIMILARITY_OPS), "device": "cpu", "reason": None}
    fns = {"fused": None, "fused+checks": None, "eager": None}
    assert check.implementations(fns) == fns


def test_reference_posing_as_fused_is_refused(generator):
    check = common.NativeCheck(CPU, allow_reference=False)
    with pytest.raises(SystemExit, match="locallearn::similarity_matching_loss, .*_backward did not run natively on "
                                         "cpu; pass --allow-reference"):
        check.call(loss_and_backward(reference_loss, generator), SIMILARITY_OPS)


def test_forward_alone_does_not_prove_the_backward(generator):
    features = random_features((12, 7), generator)
    labels = random_labels(12, 3, generator)
    check = common.NativeCheck(CPU, allow_reference=False)
    with pytest.raises(SystemExit, match=r"locallearn::similarity_matching_loss_backward did not run"):
        check.call(lambda: locallearn.similarity_matching_loss(features, labels, num_classes=3), SIMILARITY_OPS)


def test_allow_reference_drops_the_fused_implementations_and_records_why(generator):
    check = common.NativeCheck(CPU, allow_reference=True)
    check.call(loss_and_backward(locallearn.similarity_matching_loss, generator), SIMILARITY_OPS)
    check.call(loss_and_backward(reference_loss, generator), SIMILARITY_OPS)
    assert not check.ran
    assert check.implementations({"fused": 1, "fused+checks": 2, "eager": 3, "compile": 4}) == {"eager": 3,
                                                                                               "compile": 4}
    record = check.record()
    assert record["ran"] is False and record["device"] == "cpu"
    assert record["reason"] == ("locallearn::similarity_matching_loss, locallearn::similarity_matching_loss_backward "
                                "did not run natively on cpu")


def test_nothing_checked_is_not_proof():
    assert not common.NativeCheck(CPU, allow_reference=False).ran


# ---------------------------------------------------------------- the benchmarks


@pytest.fixture
def native_ops_off(monkeypatch):
    """The extension stays loaded but claims no device, so every op runs its reference."""
    monkeypatch.setattr(_native, "built_devices", frozenset())
    monkeypatch.setattr(_native, "_warned_devices", set())


@pytest.mark.usefixtures("native_ops_off")
@pytest.mark.parametrize("script, args", [("bench_similarity", SIMILARITY_SMOKE),
                                             ("bench_locally_connected", [*LC_SMOKE, "--no-train"])])
def test_benchmark_whose_fused_op_falls_back_stops_and_says_why(script, args, tmp_path):
    out = tmp_path / "bench.json"
    with pytest.warns(UserWarning, match="reference"), \
            pytest.raises(SystemExit, match=f"refusing to report a fused column: {NOT_BUILT_FOR_CPU}; pass "
                                            "--allow-reference"):
        load_benchmark(script).main([*args, "--json", str(out)])
    assert not out.exists()


@pytest.mark.usefixtures("native_ops_off")
@pytest.mark.parametrize("script, args, agreement", [("bench_similarity", SIMILARITY_SMOKE, "grad_rel_diff_vs_eager"),
                                                     ("bench_locally_connected", LC_SMOKE, "rel_diff_vs_eager")])
def test_allow_reference_times_the_reference_alone_and_records_why(script, args, agreement, tmp_path, capsys):
    out = tmp_path / "bench.json"
    with pytest.warns(UserWarning, match="reference"):
        load_benchmark(script).main([*args, "--allow-reference", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["native"] == {"ran": False, "ops": [], "device": "cpu", "reason": NOT_BUILT_FOR_CPU}
    assert result["rows"]
    for row in result["rows"]:
        assert set(row["ms"]) == {"eager"} and row["ms"]["eager"] > 0
        assert "fused" not in row["tflops"]
        assert row[agreement] is None
    assert f"no fused columns: {NOT_BUILT_FOR_CPU}" in capsys.readouterr().out


def test_script_with_native_ops_switched_off_exits_non_zero(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, _native.DISABLE_ENV: "1"}
    script = BENCHMARKS / "bench_similarity.py"
    result = subprocess.run([sys.executable, str(script), *SIMILARITY_SMOKE, "--json", str(out)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert ("refusing to report a fused column: locallearn._C is not loaded (switched off by "
            f"{_native.DISABLE_ENV}=1)") in result.stderr
    assert not out.exists()
