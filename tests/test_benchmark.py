"""The similarity-matching benchmark runs end to end and writes a complete JSON record,
with the proof that its fused columns ran the native op."""

import json

import pytest
from helpers import load_benchmark

SMOKE = ["--device", "cpu", "--batches", "16", "33", "--dims", "8", "--dtypes", "fp32", "--repeats", "3",
         "--warmup", "1", "--input-sets", "2", "--roofline-size", "64", "--no-compile"]


def test_cpu_smoke_run_writes_timings_and_agreement(tmp_path, capsys):
    out = tmp_path / "bench.json"
    load_benchmark("bench_similarity").main([*SMOKE, "--json", str(out)])
    result = json.loads(out.read_text())
    assert [(row["batch"], row["dim"]) for row in result["rows"]] == [(16, 8), (33, 8)]
    for row in result["rows"]:
        assert set(row["ms"]) == {"fused", "fused+checks", "eager"}
        assert all(ms > 0 for ms in row["ms"].values())
        assert row["grad_rel_diff_vs_eager"] < 1e-5
        assert row["tflops"]["fused"] == pytest.approx(row["model_tflop"] / (row["ms"]["fused"] * 1e-3))
    assert result["roofline_tflops"]["float32"] > 0
    assert result["native"] == {"ran": True, "ops": ["similarity_matching_loss", "similarity_matching_loss_backward"],
                                "device": "cpu", "reason": None}
    output = capsys.readouterr().out
    assert "x eager" in output and "native ops ran" in output
