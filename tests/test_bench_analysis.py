"""The analysis benchmark (TwoNN end to end, CKA matrix) runs end to end on the CPU and
writes a complete JSON record in which every implementation's estimate agrees."""

import json

import pytest
from helpers import load_benchmark


def test_cpu_quick_run_writes_every_row_and_the_estimates_agree(tmp_path, capsys):
    pytest.importorskip("skdim")
    out = tmp_path / "bench.json"
    benchmark = load_benchmark("bench_analysis")
    benchmark.main(["--device", "cpu", "--quick", "--repeats", "2", "--case-seconds", "0.2", "--json", str(out)])
    result = json.loads(out.read_text())

    assert [(row["n"], row["d"]) for row in result["twonn"]] == [(2000, 32), (2000, 128), (4000, 32), (4000, 128)]
    for row in result["twonn"]:
        assert not row.get("skipped")
        assert {"torch", "naive", "skdim"} <= set(row["ms"])
        assert all(ms is not None and ms > 0 for ms in row["ms"].values())
        assert row["floor_ms"] > 0 and row["floor_fraction"] > 0
        estimates = row["estimates"]
        # a 10-dimensional Gaussian: TwoNN lands near 10 at these N
        assert 8 < estimates["torch"] < 11
        for name in ("naive", "skdim"):
            assert estimates[name] == pytest.approx(estimates["torch"], rel=0.01)
            assert row["estimate_rel_diff_vs_torch"][name] < 0.01

    assert [row["n"] for row in result["cka"]] == [500, 2000]
    full, minibatch = result["cka"]
    assert full["ms"]["batched"] > 0 and full["ms"]["loop"] > 0
    assert full["max_abs_diff_vs_loop"] < 1e-6
    assert minibatch["ms"]["batched"] > 0 and "loop" not in minibatch["ms"]
    assert "minibatches" in minibatch["estimator"] and any("loop skipped" in note for note in minibatch["notes"])
    for row in result["cka"]:
        assert all(0 < value < 1 for value in row["cka_diagonal"])  # related, not identical, networks

    assert result["roofline_tflops"]["float32"] > 0
    assert result["device"] and result["torch"] and result["date"] and result["command"].startswith("main(")
    assert {entry["what"] for entry in result["targets"]} and all(entry["met"] is None for entry in result["targets"])
    printed = capsys.readouterr().out
    assert "x naive" in printed and "targets" in printed
