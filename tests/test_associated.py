"""Associated Learning (seed 001 §2, eqs. (1)–(7)) on MLPs, conv-then-linear networks and ResNets:
its local losses against hand computation, components of several blocks, gradient isolation
between components and losses, effective against affiliated parameters (§2.4), the inverse
rate, checkpoints, bad options, parameter counts of seed 001's networks as the recipes build
them (§3), accuracy on scikit-learn's digits above what untrained forward functions give, and
`locallearn train --rule al` at its defaults."""

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import digits_test_accuracy, frozen_hidden_test_error
from locallearn import cli, config, engine
from locallearn.engine.run import TrainSettings
from locallearn.engine.schedule import scale_learning_rates
from locallearn.models import BlockSpec, Network, build_model, initialize
from locallearn.models.mlp import mlp
from locallearn.rules import build_rule, rule_options
from locallearn.rules.associated import CONV_TARGET_WIDTH, INVERSE_LR_FACTOR, AssociatedLearning

def al_mlp(input_shape, num_classes, widths):
    """Seed 001 §3's MLP style: ELU hidden blocks, He-normal weights, zero biases."""
    model = mlp(input_shape, num_classes, widths=widths, activation="elu", batch_norm=False)
    initialize(model, "he")
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_rule(widths=(3, 4, 2), seed=0, **options) -> AssociatedLearning:
    torch.manual_seed(seed)
    model = al_mlp((5,), 3, widths=widths).double()
    return AssociatedLearning(model, lr=1e-2, **options)


def tiny_batch(seed=1, batch=6, shape=(5,)):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=generator, dtype=torch.float64)
    return x, torch.arange(batch) % 3


TINY_CONV_SPECS = [BlockSpec(3, kind="conv", max_pool=True), BlockSpec(4, kind="conv", stride=2),
                   BlockSpec(5, kind="linear"), BlockSpec(4, kind="linear")]
TINY_CONV_INPUT = (2, 6, 6)


def al_conv_net(input_shape, num_classes, specs):
    """Seed 001 §3's CNN style: ELU, no batch norm or dropout, He-normal weights."""
    model = Network("tiny-cnn", input_shape, num_classes, specs, activation="elu", dropout=0.0, batch_norm=False)
    initialize(model, "he")
    return model


def tiny_conv_rule(seed=0, **options) -> AssociatedLearning:
    """conv 3 (2×2 pool) → conv 4 (stride 2) → linear 5 → linear 4 on 2×6×6 inputs: the
    components' sᵢ are 3×3×3, 4×2×2, 5 and 4."""
    torch.manual_seed(seed)
    model = al_conv_net(TINY_CONV_INPUT, 3, TINY_CONV_SPECS).double()
    return AssociatedLearning(model, lr=1e-2, **options)


TINY_RESNET_SPECS = [BlockSpec(3, kind="conv"), BlockSpec(3, kind="residual"), BlockSpec(4, kind="residual", stride=2),
                     BlockSpec(4, kind="residual"), BlockSpec(5, kind="residual", stride=2)]
TINY_RESNET_GROUPS = (1, 1, 2, 1)


def tiny_resnet_rule(seed=0, **options) -> AssociatedLearning:
    """A ResNet in small, with batch norm (seed 001 §3 keeps it in its ResNets): conv 3 |
    residual 3 | residual 4 (stride 2) → residual 4 | residual 5 (stride 2) on 2×6×6
    inputs, four components (one of them two residual blocks, like a ResNet stage)."""
    torch.manual_seed(seed)
    model = Network("tiny-resnet", TINY_CONV_INPUT, 3, TINY_RESNET_SPECS, activation="elu", dropout=0.0,
                    batch_norm=True, output="pooled_linear", groups=TINY_RESNET_GROUPS)
    initialize(model, "he")
    return AssociatedLearning(model.double(), lr=1e-2, **options)


def make_tiny(kind, **options):
    """(rule, batch) of the tiny MLP, the tiny conv net (one component per block, or two
    blocks per component: "grouped") or the tiny ResNet."""
    if kind == "mlp":
        return tiny_rule(**options), tiny_batch()
    if kind == "resnet":
        return tiny_resnet_rule(**options), tiny_batch(shape=TINY_CONV_INPUT)
    if kind == "grouped":
        options = {"al_blocks_per_component": 2, **options}
    return tiny_conv_rule(**options), tiny_batch(shape=TINY_CONV_INPUT)


KINDS = ["mlp", "conv", "grouped", "resnet"]


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


def test_conv_losses_and_prediction_match_hand_computation():
    """Conv components: sᵢ = pool(ELU(conv(sᵢ₋₁))) (eq. (1)), a (C, H, W) map; the bridge
    flattens it, then σ(B · + β) maps it to the 256-wide target (eq. (6)); linear components
    keep targets as wide as themselves. Prediction is eq. (7) through b₄ and h₄ … h₁."""
    rule, (x, y) = make_tiny("conv")
    forward_losses, inverse_losses, s_last = rule.local_losses(x, y)
    blocks = rule.model.blocks
    s, t = x, F.one_hot(y, 3).double()
    sizes = [(3, 3, 3), (4, 2, 2), (5,), (4,)]
    for i, block in enumerate(blocks):
        if i == 0:
            s = F.max_pool2d(F.elu(F.conv2d(s, block.layer.weight, block.layer.bias, padding=1)), 2)
        elif i == 1:
            s = F.elu(F.conv2d(s, block.layer.weight, block.layer.bias, stride=2, padding=1))
        else:
            s = F.elu(s.flatten(1) @ block.layer.weight.T + block.layer.bias)
        assert tuple(s.shape[1:]) == sizes[i]
        bridge = [m for m in rule.bridges[i] if isinstance(m, nn.Linear)][0]
        assert isinstance(rule.bridges[i][0], nn.Flatten if i < 2 else nn.Linear)
        assert bridge.in_features == s[0].numel()
        assert bridge.out_features == (CONV_TARGET_WIDTH if i < 2 else sizes[i][0])
        encoder, decoder = rule.encoders[i][0], rule.decoders[i][0]
        t_next = torch.sigmoid(t @ encoder.weight.T + encoder.bias)
        bridged = torch.sigmoid(s.flatten(1) @ bridge.weight.T + bridge.bias)
        torch.testing.assert_close(forward_losses[i], ((bridged - t_next) ** 2).sum(dim=1).mean(), rtol=1e-13, atol=0)
        reconstruction = torch.sigmoid(t_next @ decoder.weight.T + decoder.bias)
        torch.testing.assert_close(inverse_losses[i], ((reconstruction - t) ** 2).mean(), rtol=1e-13, atol=0)
        t = t_next
    torch.testing.assert_close(s_last, s, rtol=1e-13, atol=0)
    t = rule.bridges[-1](s)
    for decoder in reversed(rule.decoders):
        t = decoder(t)
    torch.testing.assert_close(torch.sigmoid(rule.predict(x)), t, rtol=1e-13, atol=0)
    assert [tuple(a.shape[1:]) for a in rule.activations(x)] == [*sizes, (3,)]


def test_conv_target_widths_and_bridges():
    """al_target_width fixes every target; a deeper bridge flattens first; without a bridge
    the targets default to the flattened sizes of the sᵢ (eq. (3): ‖flatten(sᵢ) − tᵢ‖²)."""
    rule, (x, y) = make_tiny("conv", al_bridge_depth=2, al_bridge_width=7, al_target_width=6)
    assert [rule.encoders[i][0].out_features for i in range(4)] == [6, 6, 6, 6]
    layers = [m for m in rule.bridges[0] if isinstance(m, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in layers] == [(27, 7), (7, 6)]
    no_bridge, _ = make_tiny("conv", al_bridge_depth=0)
    assert [no_bridge.encoders[i][0].out_features for i in range(4)] == [27, 16, 5, 4]
    assert isinstance(no_bridge.bridges[0], nn.Flatten) and isinstance(no_bridge.bridges[3], nn.Identity)
    forward_losses, _, _ = no_bridge.local_losses(x, y)
    s = no_bridge.model.blocks[0](x)
    t = no_bridge.encoders[0](F.one_hot(y, 3).double())
    torch.testing.assert_close(forward_losses[0], ((s.flatten(1) - t) ** 2).sum(1).mean())  # eq. (3)
    assert no_bridge.predict(x).shape == (6, 3)


def test_components_of_two_blocks_match_hand_computation():
    """al_blocks_per_component = 2 (the authors' CNN_AL: two convolutions per component):
    s₁ = f₁(x) is conv → pool → conv (4×2×2) and s₂ = f₂(s₁) linear → linear (4); eq. (6)
    reads the flattened s₁ through b₁ into the 256-wide target and s₂ into a 4-wide one."""
    rule, (x, y) = make_tiny("grouped")
    blocks = rule.model.blocks
    assert [list(component) for component in rule.components] == [[blocks[0], blocks[1]], [blocks[2], blocks[3]]]
    forward_losses, inverse_losses, s_last = rule.local_losses(x, y)
    assert len(forward_losses) == len(inverse_losses) == 2
    conv1, conv2, linear1, linear2 = (block.layer for block in blocks)
    s1 = F.elu(F.conv2d(F.max_pool2d(F.elu(F.conv2d(x, conv1.weight, conv1.bias, padding=1)), 2),
                        conv2.weight, conv2.bias, stride=2, padding=1))
    s2 = F.elu(F.elu(s1.flatten(1) @ linear1.weight.T + linear1.bias) @ linear2.weight.T + linear2.bias)
    t = F.one_hot(y, 3).double()
    for i, (s, width) in enumerate(((s1, CONV_TARGET_WIDTH), (s2, 4))):
        bridge = [m for m in rule.bridges[i] if isinstance(m, nn.Linear)][0]
        assert (bridge.in_features, bridge.out_features) == (s[0].numel(), width)
        t_next = rule.encoders[i](t)
        bridged = torch.sigmoid(s.flatten(1) @ bridge.weight.T + bridge.bias)
        torch.testing.assert_close(forward_losses[i], ((bridged - t_next) ** 2).sum(1).mean(), rtol=1e-13, atol=0)
        torch.testing.assert_close(inverse_losses[i], ((rule.decoders[i](t_next) - t) ** 2).mean(), rtol=1e-13,
                                   atol=0)
        t = t_next
    torch.testing.assert_close(s_last, s2, rtol=1e-13, atol=0)
    assert [tuple(a.shape[1:]) for a in rule.activations(x)] == [(4, 2, 2), (4,), (3,)]


def test_inverse_losses_train_at_twice_the_rate():
    """The authors' code trains gᵢ and hᵢ at twice the rate of fᵢ and bᵢ, through the trainer's
    schedule too: Adam's first step moves every parameter by its rate (|Δ| = lr·|g| / (|g| + ε))."""
    rule, (x, y) = make_tiny("conv")
    assert INVERSE_LR_FACTOR == 2
    scale_learning_rates(rule.optimizers(), 0.5)  # as the trainer does at a milestone
    inverse = [*rule.encoders.parameters(), *rule.decoders.parameters()]
    before = [p.detach().clone() for p in rule.trainable_modules().parameters()]
    rule.train_step(x, y)
    for parameter, old in zip(rule.trainable_modules().parameters(), before):
        if parameter.grad is None:  # the Network's unused output layer
            continue
        moved = (parameter.detach() - old)[parameter.grad.abs() > 1e-4].abs()
        rate = 0.5 * 1e-2 * (2 if any(parameter is p for p in inverse) else 1)
        torch.testing.assert_close(moved, torch.full_like(moved, rate), rtol=1e-3, atol=0)


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


@pytest.mark.parametrize("kind", KINDS)
def test_every_loss_reaches_only_its_own_component(kind):
    """Backward of one loss at a time: eq. (6) of component i gives gradient to fᵢ and bᵢ
    only, eq. (5) to gᵢ and hᵢ only (§2.4); every parameter of that group gets one."""
    rule, (x, y) = make_tiny(kind, al_bridge_depth=2)
    every = list(rule.trainable_modules().parameters())
    for i in range(len(rule.components)):
        groups = {
            "forward": [*rule.components[i].parameters(), *rule.bridges[i].parameters()],
            "inverse": [*rule.encoders[i].parameters(), *rule.decoders[i].parameters()],
        }
        for kind, group in groups.items():
            for parameter in every:
                parameter.grad = None
            forward_losses, inverse_losses, _ = rule.local_losses(x, y)
            (forward_losses if kind == "forward" else inverse_losses)[i].backward()
            touched = {id(p) for p in every if p.grad is not None and p.grad.abs().sum() > 0}
            assert touched == ids(group), f"{kind} loss of component {i}"


@pytest.mark.parametrize("kind", KINDS)
def test_train_step_gives_each_parameter_its_own_loss_gradient(kind):
    """The summed backward of train_step equals, per parameter, its own loss's gradient,
    and the Network's unused output layer never gets one."""
    rule, (x, y) = make_tiny(kind)
    components = len(rule.components)
    expected = {}
    for i in range(components):
        for kind, group in (("forward", [*rule.components[i].parameters(), *rule.bridges[i].parameters()]),
                            ("inverse", [*rule.encoders[i].parameters(), *rule.decoders[i].parameters()])):
            forward_losses, inverse_losses, _ = rule.local_losses(x, y)
            loss = (forward_losses if kind == "forward" else inverse_losses)[i]
            for parameter, gradient in zip(group, torch.autograd.grad(loss, group)):
                expected[id(parameter)] = gradient
    rule.optimizer.step = lambda: None  # keep the gradients of train_step for inspection
    metrics = rule.train_step(x, y)
    for parameter in (p for group in rule.optimizer.param_groups for p in group["params"]):
        torch.testing.assert_close(parameter.grad, expected[id(parameter)], rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in rule.model.output.parameters())
    assert set(metrics) == {"loss", "train_error", *(f"loss/{loss}{i}" for loss in ("forward", "inverse")
                                                     for i in range(components))}
    total = sum(value for key, value in metrics.items() if key.startswith("loss/"))
    torch.testing.assert_close(metrics["loss"], total)


# ---------------------------------------------------------------- §2.4 effective vs affiliated


@pytest.mark.parametrize("kind", KINDS)
def test_affiliated_parameters_do_not_change_predictions(kind):
    rule, (x, _) = make_tiny(kind, al_bridge_depth=2)
    before = rule.predict(x)
    affiliated = rule.affiliated_parameters()
    assert ids(affiliated) == ids([*rule.encoders.parameters(),
                                   *(p for bridge in rule.bridges[:-1] for p in bridge.parameters())])
    with torch.no_grad():
        for parameter in affiliated:
            parameter.add_(torch.randn_like(parameter))
    assert torch.equal(rule.predict(x), before)


@pytest.mark.parametrize("kind", KINDS)
def test_effective_parameters_change_predictions(kind):
    rule, (x, _) = make_tiny(kind, al_bridge_depth=2)
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


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    rule, (x, y) = make_tiny(kind, al_bridge_depth=2)
    for _ in range(3):
        rule.train_step(x, y)
    buffer = io.BytesIO()
    torch.save(rule.state_dict(), buffer)
    buffer.seek(0)
    restored, _ = make_tiny(kind, al_bridge_depth=2, seed=5)
    assert not torch.equal(restored.predict(x), rule.predict(x))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.predict(x), rule.predict(x))
    rule.train_step(x, y)
    restored.train_step(x, y)  # the optimiser state came back too
    assert torch.equal(restored.predict(x), rule.predict(x))
    with pytest.raises(ValueError, match="does not fit"):
        make_tiny(kind, al_bridge_depth=1)[0].load_state_dict(rule.state_dict())


@pytest.mark.parametrize("make, match", [
    (lambda: build_model("lc-mnist", (1, 8, 8), 10, batch_norm=False), "locally_connected"),
    (lambda: build_model("mlp", (64,), 10, depth=2, width=8, batch_norm=False, dropout=0.5), "dropout=0"),
    (lambda: build_model("cnn-seed001", (1, 8, 8), 10, batch_norm=False, dropout=0.1), "dropout=0"),
    (lambda: build_model("resnet20", (1, 8, 8), 10, dropout=0.1), "dropout=0"),
])
def test_refuses_other_networks(make, match):
    with pytest.raises(ValueError, match=match):
        AssociatedLearning(make(), lr=1e-3)


def test_refuses_a_conv_block_after_a_linear_one():
    """Network itself cannot build one (a conv block needs a (C, H, W) input), so the
    check is exercised on a network whose block kinds are rewritten afterwards."""
    model = al_conv_net(TINY_CONV_INPUT, 3, TINY_CONV_SPECS)
    model.blocks[0].kind, model.blocks[2].kind = "linear", "conv"
    with pytest.raises(ValueError, match="conv blocks of tiny-cnn before its linear ones"):
        AssociatedLearning(model, lr=1e-3)


def test_accepts_all_conv_networks():
    """AL never reads the Network's output layer, so AllCNN's conv output does not matter;
    its last bridge maps the last feature map to the last target."""
    model = build_model("allcnn-c-short", (1, 8, 8), 10, activation="elu", batch_norm=False)
    rule = AssociatedLearning(model, lr=1e-3)
    assert rule.predict(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("options, match", [
    ({"al_bridge_depth": -1}, "al_bridge_depth must be ≥ 0"),
    ({"al_bridge_width": 0}, "al_bridge_width must be ≥ 1"),
    ({"al_target_width": 0}, "al_target_width must be ≥ 1"),
    ({"al_bridge_depth": 0, "al_target_width": 5}, r"needs targets as wide as the \(flattened\) hidden layers"),
    ({"al_blocks_per_component": 0}, "al_blocks_per_component must be ≥ 1"),
    ({"al_blocks_per_component": 2}, "al_blocks_per_component=2 does not divide mlp-3-4-2's 3 hidden blocks"),
    ({"al_inverse_lr_factor": 0.0}, "al_inverse_lr_factor must be positive"),
    ({"optimizer": "lbfgs"}, "unknown optimizer"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        tiny_rule(**options)


def test_refuses_to_regroup_a_resnet():
    with pytest.raises(ValueError, match=r"groups its hidden blocks itself, \(1, 1, 2, 1\) per group"):
        tiny_resnet_rule(al_blocks_per_component=1)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="at least one hidden width"):
        mlp((5,), 3, widths=())


# ---------------------------------------------------------------- §3 parameter counts, as the recipes build them

RECIPES = Path(__file__).parents[1] / "configs"


def recipe_rule(recipe: str, input_shape: tuple[int, ...]) -> AssociatedLearning:
    """AL as ``locallearn train --config configs/<recipe>`` builds it, on the meta device, 10 classes."""
    values = {key.replace("-", "_"): value for key, value in config.load_toml(RECIPES / recipe).items()}
    settings = TrainSettings(**values).resolved()
    options = {name: getattr(settings, name) for name in rule_options("al") if getattr(settings, name) is not None}
    with torch.device("meta"):
        model = build_model(settings.model, input_shape, 10, activation=settings.activation,
                            batch_norm=settings.batch_norm)
        return build_rule("al", model, lr=settings.lr, **options)


def dense(*sizes: int) -> int:
    """Weights and biases of fully-connected layers sizes[0] → sizes[1] → …"""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def convs(*channels: int) -> int:
    """Weights and biases of 3×3 convolutions channels[0] → channels[1] → …"""
    return sum(9 * a * b + b for a, b in zip(channels, channels[1:]))


def meta_parameter_count(name: str, input_shape: tuple[int, ...], batch_norm: bool) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(name, input_shape, 10, batch_norm=batch_norm).parameters())


SEED001_CONVS = convs(1, 32, 32, 32, 32, 64, 64, 64, 64)


def test_seed001_mlp_as_the_authors_built_it():
    """MLP_AL: two components of 1024 ELU units, each bridged 1024 → 5120 → 1024 to a
    1024-wide target. Effective (§2.4): f₁, f₂, b₂, h₂ (1024 → 1024), h₁ (1024 → 10), which is
    layer for layer §3.1's 1024-1024-5120-1024-1024-10, the backprop baseline."""
    rule = recipe_rule("seed001-fashion-mnist-al-mlp.toml", (1, 28, 28))
    assert [len(component) for component in rule.components] == [1, 1]
    counts = rule.parameter_counts()
    effective = dense(784, 1024, 1024) + dense(1024, 5120, 1024) + dense(1024, 1024, 10)
    assert counts["effective"] == effective == 13_405_194
    assert counts["affiliated"] == dense(10, 1024, 1024) + dense(1024, 5120, 1024)  # g₁, g₂, b₁
    assert counts["backprop"] == dense(784, 1024, 1024, 10)
    baseline = meta_parameter_count("mlp-seed001-matched", (1, 28, 28), batch_norm=False)
    assert baseline == dense(784, 1024, 1024, 5120, 1024, 1024, 10) == effective


def test_seed001_cnn_as_the_authors_built_it():
    """CNN_AL: four components of two 3×3 convolutions ('same'; the 4th and 8th with stride 2),
    each bridged from its flattened map to 1280 then 256 (the target width). Effective: the
    convolutions, b₄ (3136 → 1280 → 256), h₄, h₃, h₂ (256 → 256), h₁ (256 → 10), which is §3.1's
    14-layer CNN (8 conv, fc1280, 4 × fc256, fc10), the backprop baseline."""
    rule = recipe_rule("seed001-fashion-mnist-al-cnn.toml", (1, 28, 28))
    assert [len(component) for component in rule.components] == [2, 2, 2, 2]
    assert all(block.kind == "conv" for block in rule.model.blocks)
    counts = rule.parameter_counts()
    effective = SEED001_CONVS + dense(3136, 1280, 256) + 3 * dense(256, 256) + dense(256, 10)
    assert counts["effective"] == effective == 4_700_586
    maps = (32 * 28 * 28, 32 * 14 * 14, 64 * 14 * 14)  # s₁, s₂, s₃ flattened
    assert counts["affiliated"] == (dense(10, 256) + 3 * dense(256, 256)  # g₁ … g₄
                                    + sum(dense(size, 1280, 256) for size in maps))  # b₁, b₂, b₃
    baseline = meta_parameter_count("cnn-seed001-matched", (1, 28, 28), batch_norm=False)
    assert baseline == SEED001_CONVS + dense(3136, 1280, 256, 256, 256, 256, 10) == effective


# ---------------------------------------------------------------- ResNets (seed 001 §3)


def test_resnet_components_are_the_first_conv_and_the_stages():
    """As in the authors' code (SamYWK/Associated_Learning, ResNet_AL): four components, the
    first convolution and one per stage; each bridge flattens its stage's last feature map."""
    with torch.device("meta"):
        model = build_model("resnet20", (3, 32, 32), 10, activation="elu")
        rule = AssociatedLearning(model, lr=1e-3)
    assert [len(component) for component in rule.components] == [1, 3, 3, 3]
    assert [component[0] for component in rule.components] == [model.blocks[i] for i in (0, 1, 4, 7)]
    assert [bridge[1].in_features for bridge in rule.bridges] == [16 * 32 * 32, 16 * 32 * 32, 32 * 16 * 16,
                                                                   64 * 8 * 8]
    assert all(bridge[1].out_features == CONV_TARGET_WIDTH for bridge in rule.bridges)
    assert any(isinstance(m, nn.BatchNorm2d) for m in rule.components[2].modules())  # allowed: local to fᵢ


def test_resnet_losses_compose_each_stage():
    """Eq. (1) for a residual component: sᵢ is its blocks applied in turn to sᵢ₋₁ (batch
    statistics in training mode); eq. (6) reads the bridge of the flattened sᵢ."""
    rule, (x, y) = make_tiny("resnet")
    forward_losses, _, s_last = rule.local_losses(x, y)
    s, t = x, F.one_hot(y, 3).double()
    with torch.no_grad():
        for i, group in enumerate(TINY_RESNET_GROUPS):
            for block in rule.model.blocks[sum(TINY_RESNET_GROUPS[:i]):sum(TINY_RESNET_GROUPS[:i + 1])]:
                s = block(s)
            t = rule.encoders[i](t)
            bridge = rule.bridges[i][1]
            bridged = torch.sigmoid(s.flatten(1) @ bridge.weight.T + bridge.bias)
            torch.testing.assert_close(forward_losses[i], ((bridged - t) ** 2).sum(1).mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(s_last, s)
    assert len(rule.activations(x)) == len(TINY_RESNET_GROUPS) + 1


@pytest.mark.parametrize("name, n, residual_parameters", [("resnet20", 3, 269_722 - 650),
                                                        ("resnet32", 5, 464_154 - 650)])
def test_resnet_as_the_authors_built_it(name, n, residual_parameters):
    """ResNet_AL on CIFAR-10: the first convolution and the three stages, each bridged from
    its flattened map to 1500 then 300 (the target width). Effective: the residual network
    without its pooled fc (He et al.'s count less 64·10 + 10), b₄ (4096 → 1500 → 300) and
    h₄, h₃, h₂ (300 → 300), h₁ (300 → 10); the baseline has those fully-connected layers with
    batch norm instead of biases, one parameter more per hidden unit."""
    rule = recipe_rule(f"seed001-cifar10-al-{name}.toml", (3, 32, 32))
    assert [len(component) for component in rule.components] == [1, n, n, n]
    counts = rule.parameter_counts()
    head = dense(4096, 1500, 300) + 3 * dense(300, 300) + dense(300, 10)
    assert counts["effective"] == residual_parameters + head
    maps = (16 * 32 * 32, 16 * 32 * 32, 32 * 16 * 16)
    assert counts["affiliated"] == dense(10, 300) + 3 * dense(300, 300) + sum(dense(size, 1500, 300) for size in maps)
    baseline = meta_parameter_count(f"{name}-matched", (3, 32, 32), batch_norm=True)
    assert baseline == counts["effective"] + 1500 + 4 * 300


# ---------------------------------------------------------------- digits


def resnet_quarter_width():
    model = build_model("resnet20", (1, 8, 8), 10, width_multiplier=0.25, activation="elu", batch_norm=True)
    initialize(model, "he")
    return model


# (network, steps of 128 with Adam at 3e-3 (6e-3 for the gᵢ, hᵢ), bar). Measured on 1 thread,
# one-layer bridges, ELU, seeds 0–2 (AL, then with the fᵢ frozen at their random initialisation,
# so that only g, h and the bridges learn):
# - MLP 3×32, 600 steps: AL 0.972–0.981; frozen 0.67–0.81.
# - conv 8 (pool) → conv 16 (pool) → linear 32, 256-wide conv targets, 600 steps: AL
#   0.965–0.976; frozen 0.72–0.79.
# - resnet20 at a quarter width (4, 8, 16 channels) with batch norm, 350 steps: AL 0.969–0.976;
#   frozen at their He-normal initialisation 0.73–0.75.
DIGITS_CASES = {
    "mlp": (lambda: al_mlp((1, 8, 8), 10, widths=(32, 32, 32)), 600, 0.95),
    "conv": (lambda: al_conv_net((1, 8, 8), 10, [BlockSpec(8, kind="conv", max_pool=True),
                                                 BlockSpec(16, kind="conv", max_pool=True),
                                                 BlockSpec(32, kind="linear")]), 600, 0.94),
    "resnet": (resnet_quarter_width, 350, 0.93),
}


@pytest.mark.parametrize("network", list(DIGITS_CASES))
def test_al_learns_digits(network):
    """AL reaches the bar, and the same network with its forward functions frozen stays 0.1
    below it (seed 0): the fᵢ learned."""
    make_model, steps, bar = DIGITS_CASES[network]

    def accuracy(frozen: bool) -> float:
        torch.manual_seed(0)
        model = make_model()
        if frozen:
            model.blocks.requires_grad_(False)
        return digits_test_accuracy(AssociatedLearning(model, lr=3e-3), steps)

    frozen = accuracy(frozen=True)
    assert frozen < bar - 0.1, f"frozen forward functions: {frozen:.3f}"
    trained = accuracy(frozen=False)
    assert trained >= bar, f"AL: {trained:.3f}"


def test_train_at_the_command_line_defaults_learns_digits(tmp_path):
    """``locallearn train --rule al --data digits --epochs 10`` with every other setting at its
    default (3 × 1024 ELU MLP, one-layer bridges, batch 32, Adam 5e-4 and 1e-3 for the gᵢ, hᵢ)
    ends below 6 % test error: 3.5 / 4.3 / 4.6 % at seeds 0 / 1 / 2 (2-core CPU, torch 2.13).
    The same network with its hidden layers frozen at their initialisation and its output
    layer trained by backprop reaches 8.0 % (seed 0): the bar was 20 %, which it could not tell
    from no learning. At batch 128 the 90 steps end on the target autoencoders' initial
    plateau: 90.4 %."""
    run_dir = tmp_path / "run"
    argv = ["train", "--rule", "al", "--data", "digits", "--epochs", "10", "--no-progress", "--run-dir", str(run_dir)]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [record for record in records if record["kind"] == "epoch"][-1]
    assert last["epoch"] == 10 and last["test_error"] < 0.06, last["test_error"]
    frozen = frozen_hidden_test_error(engine.TrainSettings(rule="al", data="digits", epochs=10,
                                                           run_dir=str(tmp_path / "frozen")))
    assert frozen > 0.07, frozen
