"""Associated Learning (seed 001 §2, eqs. (1)–(7)): its local losses against hand
computation, gradient isolation between components and losses, effective against
affiliated parameters (§2.4), checkpoints, bad options, parameter counts (§3) and
accuracy on scikit-learn's digits above what untrained forward functions give."""

import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import digits_test_accuracy, normalised_digits
from locallearn.models import build_model, initialize
from locallearn.models.mlp import SEED001_WIDTHS, mlp
from locallearn.rules.associated import (AssociatedLearning, matched_backprop_widths, mlp_parameter_count,
                                         seed001_parameter_counts)

SEED001_MLP_WIDTHS = SEED001_WIDTHS["mlp-seed001"]


def al_mlp(input_shape, num_classes, widths):
    """Seed 001 §3's MLP style: ELU hidden blocks, He-normal weights, zero biases."""
    model = mlp(input_shape, num_classes, widths=widths, activation="elu", batch_norm=False)
    initialize(model, "he")
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_rule(widths=(3, 4, 2), seed=0, **options) -> AssociatedLearning:
    torch.manual_seed(seed)
    model = al_mlp((5,), 3, widths=widths).double()
    return AssociatedLearning(model, lr=1e-2, **options)


def tiny_batch(seed=1, batch=6):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, generator=generator, dtype=torch.float64)
    return x, torch.arange(batch) % 3


def ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


# ---------------------------------------------------------------- eqs. (1)–(6) by hand


def test_losses_match_hand_computation():
    """Eq. (6) ‖σ(B sᵢ + β) − tᵢ‖² (batch mean of the per-example sum) and eq. (5)
    mean((σ(V tᵢ + v) − tᵢ₋₁)²), with sᵢ = ELU(W sᵢ₋₁ + c) (eq. (1)) and tᵢ = σ(Q tᵢ₋₁ + q)
    (eq. (2)), t₀ the one-hot label, in float64."""
    rule = tiny_rule()
    x, y = tiny_batch()
    forward_losses, inverse_losses, s_last = rule.local_losses(x, y)
    s, t = x, F.one_hot(y, 3).double()
    for i, block in enumerate(rule.model.blocks):
        s = F.elu(s @ block.layer.weight.T + block.layer.bias)
        encoder, decoder, bridge = rule.encoders[i][0], rule.decoders[i][0], rule.bridges[i][0]
        t_next = torch.sigmoid(t @ encoder.weight.T + encoder.bias)
        bridged = torch.sigmoid(s @ bridge.weight.T + bridge.bias)
        expected_forward = ((bridged - t_next) ** 2).sum(dim=1).mean()
        reconstruction = torch.sigmoid(t_next @ decoder.weight.T + decoder.bias)
        expected_inverse = ((reconstruction - t) ** 2).mean()
        torch.testing.assert_close(forward_losses[i], expected_forward, rtol=1e-13, atol=0)
        torch.testing.assert_close(inverse_losses[i], expected_inverse, rtol=1e-13, atol=0)
        t = t_next
    torch.testing.assert_close(s_last, s, rtol=1e-13, atol=0)


def test_prediction_is_equation_7():
    """ŷ₀ = h₁ ∘ h₂ ∘ h₃ ∘ b₃ ∘ f₃ ∘ f₂ ∘ f₁(x); predict gives h₁'s pre-sigmoid values."""
    rule = tiny_rule()
    x, _ = tiny_batch()
    s = x
    for block in rule.model.blocks:
        s = F.elu(block.layer(s))
    t = rule.bridges[-1](s)
    t = rule.decoders[2](t)
    t = rule.decoders[1](t)
    expected = rule.decoders[0](t)
    torch.testing.assert_close(torch.sigmoid(rule.predict(x)), expected, rtol=1e-13, atol=0)
    activations = rule.activations(x)
    assert [a.shape[1] for a in activations] == [3, 4, 2, 3]
    torch.testing.assert_close(activations[-1], rule.predict(x))


def test_bridge_depth_width_and_target_width():
    rule = tiny_rule(al_bridge_depth=3, al_bridge_width=7, al_target_width=6)
    layers = [m for m in rule.bridges[1] if isinstance(m, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in layers] == [(4, 7), (7, 7), (7, 6)]
    assert all(isinstance(m, nn.Sigmoid) for m in list(rule.bridges[1])[1::2])
    assert [rule.encoders[i][0].out_features for i in range(3)] == [6, 6, 6]
    assert rule.decoders[0][0].out_features == 3
    no_bridge = tiny_rule(al_bridge_depth=0)
    assert all(isinstance(bridge, nn.Identity) for bridge in no_bridge.bridges)
    x, y = tiny_batch()
    forward_losses, _, _ = no_bridge.local_losses(x, y)
    s = F.elu(no_bridge.model.blocks[0].layer(x))
    t = no_bridge.encoders[0](F.one_hot(y, 3).double())
    torch.testing.assert_close(forward_losses[0], ((s - t) ** 2).sum(1).mean())  # eq. (3)


def test_he_normal_initialisation():
    """Seed 001 §3: He-normal weights (std √(2 / fan_in)), zero biases, for f and AL's own modules."""
    torch.manual_seed(0)
    model = al_mlp((400,), 10, widths=(300, 300))
    rule = AssociatedLearning(model, lr=1e-3)
    for layer in [model.blocks[1].layer, rule.encoders[1][0], rule.decoders[1][0], rule.bridges[0][0]]:
        expected = (2 / layer.in_features) ** 0.5
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert torch.count_nonzero(layer.bias) == 0
    assert isinstance(model.blocks[0].activation, nn.ELU)
    assert isinstance(rule.optimizer, torch.optim.Adam)
    assert isinstance(AssociatedLearning(model, lr=1e-3, optimizer="sgd").optimizer, torch.optim.SGD)


# ---------------------------------------------------------------- locality


def test_every_loss_reaches_only_its_own_component():
    """Backward of one loss at a time: eq. (6) of component i gives gradient to fᵢ and bᵢ
    only, eq. (5) to gᵢ and hᵢ only (§2.4); every parameter of that group gets one."""
    rule = tiny_rule(al_bridge_depth=2)
    x, y = tiny_batch()
    every = list(rule.trainable_modules().parameters())
    for i in range(3):
        groups = {
            "forward": [*rule.model.blocks[i].parameters(), *rule.bridges[i].parameters()],
            "inverse": [*rule.encoders[i].parameters(), *rule.decoders[i].parameters()],
        }
        for kind, group in groups.items():
            for parameter in every:
                parameter.grad = None
            forward_losses, inverse_losses, _ = rule.local_losses(x, y)
            (forward_losses if kind == "forward" else inverse_losses)[i].backward()
            touched = {id(p) for p in every if p.grad is not None and p.grad.abs().sum() > 0}
            assert touched == ids(group), f"{kind} loss of component {i}"


def test_train_step_gives_each_parameter_its_own_loss_gradient():
    """The summed backward of train_step equals, per parameter, its own loss's gradient,
    and the Network's unused output layer never gets one."""
    rule = tiny_rule()
    x, y = tiny_batch()
    expected = {}
    for i in range(3):
        for kind, group in (("forward", [*rule.model.blocks[i].parameters(), *rule.bridges[i].parameters()]),
                            ("inverse", [*rule.encoders[i].parameters(), *rule.decoders[i].parameters()])):
            forward_losses, inverse_losses, _ = rule.local_losses(x, y)
            loss = (forward_losses if kind == "forward" else inverse_losses)[i]
            for parameter, gradient in zip(group, torch.autograd.grad(loss, group)):
                expected[id(parameter)] = gradient
    rule.optimizer.step = lambda: None  # keep the gradients of train_step for inspection
    metrics = rule.train_step(x, y)
    for parameter in rule.optimizer.param_groups[0]["params"]:
        torch.testing.assert_close(parameter.grad, expected[id(parameter)], rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in rule.model.output.parameters())
    assert set(metrics) == {"loss", "train_error", *(f"loss/{kind}{i}" for kind in ("forward", "inverse")
                                                     for i in range(3))}
    total = sum(value for key, value in metrics.items() if key.startswith("loss/"))
    torch.testing.assert_close(metrics["loss"], total)


# ---------------------------------------------------------------- §2.4 effective vs affiliated


def test_affiliated_parameters_do_not_change_predictions():
    rule = tiny_rule(al_bridge_depth=2)
    x, _ = tiny_batch()
    before = rule.predict(x)
    affiliated = rule.affiliated_parameters()
    assert ids(affiliated) == ids([*rule.encoders.parameters(), *rule.bridges[0].parameters(),
                                   *rule.bridges[1].parameters()])
    with torch.no_grad():
        for parameter in affiliated:
            parameter.add_(torch.randn_like(parameter))
    assert torch.equal(rule.predict(x), before)


def test_effective_parameters_change_predictions():
    rule = tiny_rule(al_bridge_depth=2)
    x, _ = tiny_batch()
    effective = rule.effective_parameters()
    every = ids(rule.trainable_modules().parameters()) - ids(rule.model.output.parameters())
    assert ids(effective) | ids(rule.affiliated_parameters()) == every
    assert not ids(effective) & ids(rule.affiliated_parameters())
    for parameter in effective:
        before = rule.predict(x)
        saved = parameter.detach().clone()
        with torch.no_grad():
            parameter.add_(torch.randn_like(parameter))
        assert not torch.allclose(rule.predict(x), before), tuple(parameter.shape)
        with torch.no_grad():
            parameter.copy_(saved)


# ---------------------------------------------------------------- checkpoints and bad input


def test_state_dict_round_trip():
    rule = tiny_rule(al_bridge_depth=2)
    x, y = tiny_batch()
    for _ in range(3):
        rule.train_step(x, y)
    buffer = io.BytesIO()
    torch.save(rule.state_dict(), buffer)
    buffer.seek(0)
    restored = tiny_rule(al_bridge_depth=2, seed=5)
    assert not torch.equal(restored.predict(x), rule.predict(x))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.predict(x), rule.predict(x))
    rule.train_step(x, y)
    restored.train_step(x, y)  # the optimiser state came back too
    assert torch.equal(restored.predict(x), rule.predict(x))
    with pytest.raises(ValueError, match="does not fit"):
        tiny_rule(al_bridge_depth=1).load_state_dict(rule.state_dict())


@pytest.mark.parametrize("make, match", [
    (lambda: build_model("allcnn-c-short", (1, 8, 8), 10, batch_norm=False), "fully-connected layers"),
    (lambda: build_model("mlp", (64,), 10, depth=2, width=8, batch_norm=True), "batch_norm=False"),
    (lambda: build_model("mlp", (64,), 10, depth=2, width=8, batch_norm=False, dropout=0.5), "dropout=0"),
])
def test_refuses_other_networks(make, match):
    with pytest.raises(ValueError, match=match):
        AssociatedLearning(make(), lr=1e-3)


@pytest.mark.parametrize("options, match", [
    ({"al_bridge_depth": -1}, "al_bridge_depth must be ≥ 0"),
    ({"al_bridge_width": 0}, "al_bridge_width must be ≥ 1"),
    ({"al_target_width": 0}, "al_target_width must be ≥ 1"),
    ({"al_bridge_depth": 0, "al_target_width": 5}, "needs targets as wide as the hidden layers"),
    ({"optimizer": "lbfgs"}, "unknown optimizer"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        tiny_rule(**options)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="at least one hidden width"):
        mlp((5,), 3, widths=())
    with pytest.raises(ValueError, match="already has more than"):
        matched_backprop_widths(5, (10,), 3, 10)


# ---------------------------------------------------------------- §3 parameter counts


def test_seed001_parameter_counts():
    """Effective: the fᵢ (784-1024-1024-5120-1024-1024), the hᵢ (t₅ → … → t₀, widths
    1024-1024-5120-1024-1024-10) and b₅ (1024 → 1024); affiliated: the gᵢ and b₁ … b₄.
    The backprop MLP is enlarged to the effective count (§3)."""
    counts = seed001_parameter_counts()
    forward = mlp_parameter_count(784, SEED001_MLP_WIDTHS[:-1], 1024)
    decoders = mlp_parameter_count(1024, (1024, 5120, 1024, 1024), 10)
    assert counts["effective"] == forward + decoders + 1024 * 1024 + 1024
    assert counts["backprop"] == mlp_parameter_count(784, SEED001_MLP_WIDTHS, 10)
    encoders = mlp_parameter_count(10, (1024, 1024, 5120, 1024), 1024)
    bridges = 3 * (1024 * 1024 + 1024) + 5120 * 5120 + 5120
    assert counts["affiliated"] == encoders + bridges
    widths = counts["backprop_matched_widths"]
    assert widths[:5] == SEED001_MLP_WIDTHS and len(widths) > 5
    assert counts["backprop_matched"] == mlp_parameter_count(784, widths, 10)
    assert abs(counts["backprop_matched"] - counts["effective"]) <= widths[-2] + 11
    assert widths == SEED001_WIDTHS["mlp-seed001-matched"]  # the model --model mlp-seed001-matched builds
    assert (counts["effective"], counts["backprop_matched"]) == (27_045_898, 27_045_854)


# ---------------------------------------------------------------- digits

# Measured (1 thread, seeds 0–2, 600 Adam steps of 128 at 3e-3, ELU 3×32, one-layer bridges):
# AL 0.970–0.976; the same with the fᵢ frozen at their random initialisation (only g, h and
# the bridges learn) 0.63–0.80, so a bar of 0.95 means the forward functions learned.
DIGITS_BAR = 0.95


def digits_accuracy(frozen: bool) -> float:
    x_train = normalised_digits()[0]
    torch.manual_seed(0)
    model = al_mlp(tuple(x_train.shape[1:]), 10, widths=(32, 32, 32))
    if frozen:
        model.blocks.requires_grad_(False)
    rule = AssociatedLearning(model, lr=3e-3)
    return digits_test_accuracy(rule, 600)


def test_al_learns_digits():
    frozen = digits_accuracy(frozen=True)
    accuracy = digits_accuracy(frozen=False)
    assert frozen < DIGITS_BAR - 0.1, f"frozen forward functions: {frozen:.3f}"
    assert accuracy >= DIGITS_BAR, f"AL: {accuracy:.3f}"
