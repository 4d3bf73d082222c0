"""tools/lra_targets.py, which measures the LRA-E target displacements docs/RESULTS.md quotes:
in seed 002's 5-layer Fashion-MNIST net at initialisation, with κ = 2 (eq. (5)) the displacement
|y − z| grows from the top hidden layer down, with κ = 1 (eq. (3) as printed, the authors' code)
it shrinks; the top layer's is the same."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import lra_targets  # noqa: E402

from locallearn.engine.run import build_parts, settings_from_toml  # noqa: E402


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def displacements_at_init(factor: float) -> list[float]:
    if not FASHION_MNIST.is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    recipe = settings_from_toml(REPO / "configs/seed002-fashion-mnist-lra-e.toml")
    settings = dataclasses.replace(recipe, depth=5, seed=0, lra_error_factor=factor).resolved()
    parts = build_parts(settings)
    x, y = next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(0))))
    return [distance for distance, _ in lra_targets.displacements(parts.rule, x, y)]


def test_error_factor_decides_whether_targets_grow_or_shrink_down_the_net():
    two, one = displacements_at_init(2.0), displacements_at_init(1.0)
    assert len(two) == len(one) == 5
    assert two[0] == one[0]  # the top hidden layer's target comes from the output error alone
    # κ = 2: 0.50 at the top, up to 0.69 where tanh saturates; κ = 1: down to 0.27.
    assert all(lower > upper - 0.01 for upper, lower in zip(two, two[1:])) and two[-1] > two[0] + 0.1, two
    assert all(lower < upper for upper, lower in zip(one, one[1:])) and one[-1] < one[0] - 0.1, one


def test_error_weight_alignment_measures_drift_from_the_draw_and_cosine_with_w_transposed():
    from locallearn.models import build_model
    from locallearn.rules.lra import LocalRepresentationAlignment

    def rule():
        torch.manual_seed(0)
        model = build_model("mlp", (1, 8, 8), 10, depth=3, width=16, activation="tanh", batch_norm=False)
        return LocalRepresentationAlignment(model, lr=0.01, optimizer="sgd")

    initial, trained = rule(), rule()
    assert [moved for moved, _ in lra_targets.error_weight_alignment(initial, trained)] == [0.0, 0.0, 0.0]
    with torch.no_grad():
        first, second = trained.error_weights[0], trained.error_weights[1]
        first.mul_(1.5)  # moved by half its norm, direction kept
        second.copy_(trained.layers[2].weight.T * 3)  # now parallel to W³ᵀ
    (moved_first, cosine_first), (moved_second, cosine_second), unchanged = \
        lra_targets.error_weight_alignment(initial, trained)
    assert moved_first == pytest.approx(0.5)
    assert cosine_first == pytest.approx(lra_targets.error_weight_alignment(initial, initial)[0][1])
    assert cosine_second == pytest.approx(1.0)
    assert unchanged[0] == 0.0
