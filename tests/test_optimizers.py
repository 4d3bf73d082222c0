"""The optimisers of ``--optimizer``: StabilisedRMSprop against Lee et al.'s update, float64."""

import pytest
import torch

from locallearn.rules.optimizers import OPTIMIZERS, StabilisedRMSprop


def lee_rms_prop(theta, gradients, lr, momentum=0.9, averaging=0.95, stabilizer=0.001):
    """Lee et al.'s util.py ``rms_prop``, one update per gradient, written out by hand."""
    increment = mean = square_mean = 0.0 * theta
    for g in gradients:
        mean = averaging * mean + (1 - averaging) * g
        square_mean = averaging * square_mean + (1 - averaging) * g ** 2
        increment = momentum * increment - lr * g / torch.sqrt(square_mean - mean ** 2 + stabilizer)
        theta = theta + increment
    return theta


def run(optimizer_class, theta, gradients, **options):
    parameter = torch.nn.Parameter(theta.clone())
    optimizer = optimizer_class([parameter], **options)
    for g in gradients:
        parameter.grad = g.clone()
        optimizer.step()
    return parameter.detach()


def test_matches_lee_et_al_update_in_float64():
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(7, 5, dtype=torch.float64, generator=generator)
    # gradients of very different sizes, so that both the stabiliser and the centring matter
    gradients = [torch.randn(7, 5, dtype=torch.float64, generator=generator) * scale
                 for scale in (1.0, 1e-4, 0.3, 1e-2, 2.0, 1e-5)]
    ours = run(StabilisedRMSprop, theta, gradients, lr=0.0149)
    torch.testing.assert_close(ours, lee_rms_prop(theta, gradients, 0.0149), rtol=1e-12, atol=1e-14)


def test_small_gradients_get_small_steps_unlike_torch_rmsprop():
    """A gradient of 1e-5 moves a weight by λ·g/√(0.05·0.95·g² + s) ≈ λ·g/√s, about 3e-4 λ,
    where torch's RMSprop (ε outside the root) moves it by about λ/√(1 − α) = 10 λ."""
    theta, gradients = torch.zeros(3, dtype=torch.float64), [torch.full((3,), 1e-5, dtype=torch.float64)]
    ours = run(StabilisedRMSprop, theta, gradients, lr=1.0)
    g = 1e-5
    expected = -g / (0.05 * g ** 2 - (0.05 * g) ** 2 + 1e-3) ** 0.5
    torch.testing.assert_close(ours, torch.full((3,), expected, dtype=torch.float64), rtol=1e-12, atol=0)
    theirs = run(torch.optim.RMSprop, theta, gradients, lr=1.0)
    assert theirs.abs().min() > 1e4 * ours.abs().max()


def test_weight_decay_adds_to_the_gradient():
    theta = torch.tensor([2.0], dtype=torch.float64)
    ours = run(StabilisedRMSprop, theta, [torch.tensor([0.5], dtype=torch.float64)], lr=0.1, weight_decay=0.25)
    torch.testing.assert_close(ours, lee_rms_prop(theta, [torch.tensor([1.0], dtype=torch.float64)], 0.1))


@pytest.mark.parametrize("option", [{"lr": 0.0}, {"lr": 0.1, "averaging": 1.0}, {"lr": 0.1, "momentum": -0.1},
                                    {"lr": 0.1, "stabiliser": 0.0}, {"lr": 0.1, "weight_decay": -1.0}])
def test_bad_settings_are_refused(option):
    with pytest.raises(ValueError, match="StabilisedRMSprop needs"):
        StabilisedRMSprop([torch.nn.Parameter(torch.zeros(1))], **option)


def test_registered_for_the_command_line():
    assert OPTIMIZERS["rmsprop-dtp"] is StabilisedRMSprop


def test_dtp_sigma_learns_digits_with_it_and_checkpoints_its_state(tmp_path):
    """seed 002's DTP-σ recipe (tanh, Glorot, batch 50, λ = 0.001) with Lee et al.'s RMSprop
    trains digits; the checkpoint carries the optimiser's running averages and increments."""
    from locallearn import engine

    settings = engine.TrainSettings(rule="dtp-sigma", data="digits", depth=3, width=64, activation="tanh",
                                    batch_norm=False, init="glorot", optimizer="rmsprop-dtp", lr=0.001,
                                    batch_size=50, epochs=10, device="cpu", run_dir=str(tmp_path / "run"))
    trainer = engine.start_run(settings, progress=False)
    trainer.fit()
    epochs = [record for record in engine.read_metrics(trainer.run_dir) if record["kind"] == "epoch"]
    assert epochs[-1]["test_error"] < 0.2
    optimizer_states = engine.load_checkpoint(trainer.checkpoint_path)["rule"]["optimizers"]
    increments = [state["increment"] for saved in optimizer_states for state in saved["state"].values()]
    assert increments and all(increment.abs().sum() > 0 for increment in increments)
