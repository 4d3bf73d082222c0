"""The autoencoder task of seed 003 §5.5: a network that reconstructs its input under
the squared L2 error, trained by backprop, DTP and SDTP."""

import math

import pytest
import torch
from helpers import normalised_digits

from locallearn import engine
from locallearn.engine.metrics import read_metrics
from locallearn.models import Reconstruction, build_model
from locallearn.models.mlp import autoencoder
from locallearn.rules import build_rule

DIGITS_SHAPE = (1, 8, 8)
SMALL_WIDTHS = (64, 16, 64)  # a 16-unit bottleneck for the 64-pixel digits


def test_reconstruction_loss_and_error_are_the_squared_error():
    output = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    x = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])  # flattened to the output's shape
    task = Reconstruction()
    assert task.loss(output, x, None).item() == pytest.approx((5 + 5) / 2)
    assert task.loss(output, x, None, reduction="sum").item() == pytest.approx(10)
    assert task.error(output, x, None).item() == pytest.approx(10 / 4)
    assert torch.equal(task.best_output(x, None), x.flatten(1))


def test_seed_003_autoencoder_shape_and_parameter_count():
    model = build_model("autoencoder", (1, 28, 28), num_classes=10, activation="tanh", batch_norm=False)
    assert [block.layer.out_features for block in model.blocks] == [512, 64, 512]
    assert model.output.layer.out_features == 784 and model.task.name == "reconstruction"
    # 784-512-64-512-784, weights plus biases
    expected = (784 * 512 + 512) + (512 * 64 + 64) + (64 * 512 + 512) + (512 * 784 + 784)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_dtp_top_target_is_a_gradient_step_on_the_reconstruction_error():
    """ĥ_{L−1} = h − α ∂‖W h + b − x‖²/∂h = h − 2α Wᵀ(W h + b − x) for the linear output."""
    torch.manual_seed(0)
    model = autoencoder(DIGITS_SHAPE, widths=SMALL_WIDTHS).double()
    rule = build_rule("dtp", model, lr=1e-3, target_step=0.05)
    x = torch.randn(5, *DIGITS_SHAPE, dtype=torch.float64)
    activities, targets = rule.targets(x, torch.zeros(5, dtype=torch.long))
    h, layer = activities[-1], model.output.layer
    expected = h - 2 * 0.05 * (h @ layer.weight.T + layer.bias - x.flatten(1)) @ layer.weight
    torch.testing.assert_close(targets[-1], expected)


def test_sdtp_top_target_inverts_the_input_through_the_output_inverse():
    """Seed 003 Algorithm 1 with ô = x: ĥ_{L−1} = h − g_L(x̂) + g_L(x)."""
    torch.manual_seed(0)
    model = autoencoder(DIGITS_SHAPE, widths=SMALL_WIDTHS).double()
    rule = build_rule("sdtp", model, lr=1e-3)
    x = torch.randn(5, *DIGITS_SHAPE, dtype=torch.float64)
    activities, targets = rule.targets(x, torch.zeros(5, dtype=torch.long))
    inverse = rule.inverses["output"]
    with torch.no_grad():
        reconstruction = model(x)
        expected = activities[-1] - inverse(reconstruction) + inverse(x.flatten(1))
    torch.testing.assert_close(targets[-1], expected)


def _pca_error(x_train: torch.Tensor, x_test: torch.Tensor, components: int) -> float:
    """Test MSE of the best linear reconstruction through ``components`` dimensions."""
    mean = x_train.mean(0)
    basis = torch.linalg.svd(x_train - mean, full_matrices=False).Vh[:components]
    reconstruction = (x_test - mean) @ basis.T @ basis + mean
    return (reconstruction - x_test).square().mean().item()


def _test_error(rule_name: str, lr: float, steps: int = 1500) -> float:
    x_train, y_train, x_test, _ = normalised_digits()
    torch.manual_seed(0)
    rule = build_rule(rule_name, autoencoder(DIGITS_SHAPE, widths=SMALL_WIDTHS), lr=lr)
    order = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(len(x_train), (64,), generator=order)
        rule.train_step(x_train[index], y_train[index])
    return (rule.predict(x_test) - x_test.flatten(1)).square().mean().item()


@pytest.mark.parametrize(("rule_name", "lr", "bar"), [
    # Measured (1500 steps): backprop 0.083 and DTP 0.094 against PCA's 0.081, the best any
    # linear 16-dimensional code can do; SDTP underfits (0.21) as seed 003 §5.5 reports,
    # still far below the 0.52 of predicting the mean image.
    ("backprop", 1e-3, ("pca", 1.3)),
    ("dtp", 1e-3, ("pca", 1.5)),
    ("sdtp", 3e-4, ("mean", 0.6)),
])
def test_autoencoder_learns_digits(rule_name, lr, bar):
    x_train, _, x_test, _ = normalised_digits()
    x_train, x_test = x_train.flatten(1), x_test.flatten(1)
    baseline, factor = bar
    reference = (_pca_error(x_train, x_test, SMALL_WIDTHS[1]) if baseline == "pca"
                 else (x_test - x_train.mean(0)).square().mean().item())
    error = _test_error(rule_name, lr)
    assert error < factor * reference, f"{rule_name}: test MSE {error:.4f}, bar {factor} × {baseline} {reference:.4f}"


@pytest.mark.parametrize("rule_name", ["predsim", "dfa", "lra-e", "ddtp"])
def test_classification_only_rules_refuse_an_autoencoder(rule_name):
    with pytest.raises(ValueError, match="reconstruction network"):
        build_rule(rule_name, autoencoder(DIGITS_SHAPE, widths=SMALL_WIDTHS), lr=1e-3)


def test_training_run_reports_the_reconstruction_error(tmp_path):
    settings = engine.TrainSettings(rule="dtp", model="autoencoder", data="digits", epochs=1, device="cpu",
                                    batch_size=64, run_dir=str(tmp_path / "run"))
    trainer = engine.start_run(settings, progress=False)
    trainer.fit()
    record = [r for r in read_metrics(trainer.run_dir) if r["kind"] == "epoch"][-1]
    assert math.isfinite(record["test_error"]) and record["test_loss"] == pytest.approx(64 * record["test_error"])
