"""`locallearn analyze`: a trained run's layers measured from its checkpoint, read-only,
with the numbers the analysis functions give on the same activations."""

import json

import pytest
import torch

from locallearn import cli, engine
from locallearn.analysis.intrinsic_dimension import TwoNN
from locallearn.analysis.report import collect_activations
from locallearn.analysis.separation import class_separation

SAMPLES = 300


def train_digits_run(run_dir, rule: str = "backprop", **overrides) -> str:
    settings = dict(rule=rule, model="mlp", data="digits", depth=2, width=32, epochs=1, batch_size=64,
                    device="cpu", run_dir=str(run_dir))
    engine.start_run(engine.TrainSettings(**{**settings, **overrides}), progress=False).fit()
    return str(run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return train_digits_run(root / "bp"), train_digits_run(root / "fa", rule="fa")


def files_under(path):
    return {item.relative_to(path): item.stat().st_mtime_ns for item in path.rglob("*") if item.is_file()}


def test_analyze_writes_figures_and_report_without_touching_the_run(runs, capsys):
    from pathlib import Path

    first, second = map(Path, runs)
    before = files_under(first)
    assert cli.main(["analyze", str(first), "--compare", str(second), "--max-samples", str(SAMPLES),
                     "--no-progress"]) == 0
    after = files_under(first)
    assert {path: stamp for path, stamp in after.items() if path.parts[0] != "figures"} == before
    figures = first / "figures"
    for name in ("bp-intrinsic-dimension", "bp-cka", "bp-rsa", "bp-tsne", "fa-cka", "bp-vs-fa-cka", "bp-vs-fa-rsa"):
        assert (figures / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((figures / "analysis.json").read_text())
    assert report["samples"] == SAMPLES and set(report["runs"]) == {"bp", "fa"}
    bp = report["runs"]["bp"]
    assert bp["layers"] == ["block0", "block1", "output"] and bp["features"] == [32, 32, 10]
    assert torch.allclose(torch.tensor(bp["cka"]).diagonal(), torch.ones(3))
    assert len(report["compare"]["cka"]) == 3 and len(report["compare"]["cka"][0]) == 3
    # Backprop's own update is backprop's; FA's output layer gets the true error, its hidden ones do not.
    assert all(angle < 1e-3 for angle in bp["alignment_degrees"].values())
    fa_angles = report["runs"]["fa"]["alignment_degrees"]
    assert fa_angles["output.layer"] < 1e-3 and fa_angles["blocks.0.layer"] > 1
    assert len(bp["discrepancy"]) == 1 and bp["discrepancy"][0]["total"] > 0  # one epoch, one record
    assert "block1" in capsys.readouterr().out


def test_report_numbers_are_those_of_the_checkpointed_network(runs):
    """The ID and class separation in the report are the library's on the activations
    of the first SAMPLES test examples through the restored rule."""
    from locallearn.analysis.report import analyze_run

    report = analyze_run(runs[0], max_samples=SAMPLES, progress=False)["runs"]["bp"]
    _, parts, epoch = engine.load_trained(runs[0])
    images = parts.dataset.x_test[:SAMPLES]
    mean, std = parts.dataset.mean[0], parts.dataset.std[0]
    activations = parts.rule.activations((images - mean) / std)
    assert report["epoch"] == epoch == 1
    for index, layer in enumerate(activations):
        assert report["intrinsic_dimension"][index]["dimension"] == pytest.approx(TwoNN().fit(layer).dimension_)
        separation = class_separation(layer, parts.dataset.y_test[:SAMPLES])
        assert report["class_separation"][index]["ratio"] == pytest.approx(separation.ratio)


def test_a_run_compared_with_itself_matches_its_own_layers(runs):
    from locallearn.analysis.report import analyze_run

    report = analyze_run(runs[0], compare=runs[0], max_samples=SAMPLES, tsne_layers=["output"], progress=False)
    own = torch.tensor(report["runs"]["bp"]["cka"])
    assert torch.allclose(torch.tensor(report["compare"]["cka"]), own, atol=1e-6)
    assert report["runs"]["bp"]["tsne_layers"] == ["output"]


def test_bad_requests_say_why(runs, tmp_path, capsys):
    from locallearn.analysis.report import analyze_run

    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "config.toml").write_text('rule = "backprop"\ndata = "digits"\n')
    with pytest.raises(ValueError, match="no checkpoint"):
        collect_activations(tmp_path / "untrained")
    other_data = train_digits_run(tmp_path / "synthetic", data="synthetic")
    with pytest.raises(ValueError, match="same examples"):
        analyze_run(runs[0], compare=other_data, max_samples=50, progress=False)
    with pytest.raises(ValueError, match="split"):
        collect_activations(runs[0], split="validation")
    with pytest.raises(ValueError, match="max_samples"):
        collect_activations(runs[0], max_samples=2)
    assert cli.main(["analyze", str(tmp_path / "absent"), "--no-progress"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert cli.main(["analyze", runs[0], "--tsne-layers", "block7", "--max-samples", "50", "--no-progress"]) == 2
    assert "block7" in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["al", "eqprop", "lra-e"])
def test_every_kind_of_rule_can_be_analyzed(rule, tmp_path):
    """Rules that predict another way (AL's decoders, EqProp's settling) or log other local
    losses (AL's loss/forward<k>) still give a full report."""
    from locallearn.analysis.report import analyze_run

    options = {"eqprop_free_steps": 5, "eqprop_weak_steps": 2} if rule == "eqprop" else {}
    run = train_digits_run(tmp_path / rule, rule=rule, batch_norm=False, **options)
    report = analyze_run(run, max_samples=100, progress=False)["runs"][rule]
    assert report["discrepancy"] and report["discrepancy"][0]["total"] > 0
    assert len(report["intrinsic_dimension"]) == len(report["layers"]) == len(report["class_separation"])


def test_activations_see_the_inputs_scaled_as_the_run_trained_on_them(tmp_path):
    """A run trained on pixel/255 in [0, 1] (seed 002's --input-scaling unit) is analysed on
    the same inputs, not standardised ones (the analysis standardised every run before)."""
    run_dir = train_digits_run(tmp_path / "unit", input_scaling="unit")
    collected = collect_activations(run_dir, max_samples=50)
    _, parts, _ = engine.load_trained(run_dir)
    expected = parts.rule.activations(parts.dataset.x_test[:50])  # digits are stored in [0, 1]
    for layer, reference in zip(collected.layers, expected, strict=True):
        torch.testing.assert_close(layer, reference.flatten(1))

