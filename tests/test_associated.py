"""Associated Learning (seed 001 §2, eqs. (1)–(7)) on MLPs, conv-then-linear networks and ResNets:
its local losses against hand computation, gradient isolation between components and
losses, effective against affiliated parameters (§2.4), checkpoints, bad options,
parameter counts of seed 001's MLP and CNN (§3) and accuracy on scikit-learn's digits
above what untrained forward functions give."""

import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import digits_test_accuracy
from locallearn.models import BlockSpec, Network, build_model, initialize
from locallearn.models.cnn import SEED001_CNN_FC
from locallearn.models.mlp import SEED001_WIDTHS, mlp
from locallearn.models.resnet import MATCHED_FC
from locallearn.rules.associated import (CONV_TARGET_WIDTH, AssociatedLearning, matched_backprop_widths,
                                         mlp_parameter_count, seed001_cnn_parameter_counts,
                                         seed001_parameter_counts, seed001_resnet_parameter_counts)

SEED001_MLP_WIDTHS = SEED001_WIDTHS["mlp-seed001"]


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
    """(rule, batch) of the tiny MLP, the tiny conv net or the tiny ResNet."""
    if kind == "mlp":
        return tiny_rule(**options), tiny_batch()
    if kind == "resnet":
        return tiny_resnet_rule(**options), tiny_batch(shape=TINY_CONV_INPUT)
    return tiny_conv_rule(**options), tiny_batch(shape=TINY_CONV_INPUT)


KINDS = ["mlp", "conv", "resnet"]


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
    for parameter in rule.optimizer.param_groups[0]["params"]:
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


def conv_parameter_count(channels_in: int, channels: list[int]) -> int:
    sizes = [channels_in, *channels]
    return sum(9 * a * b + b for a, b in zip(sizes, sizes[1:]))


def test_seed001_cnn_parameter_counts():
    """cnn-seed001 on 1×28×28: convs 3×3 ×32 ×4 (the 4th stride 2) and ×64 ×4 (the 8th
    stride 2) leave 64×7×7 = 3136 features; fc1280, 4 × fc256, fc10. Under AL: effective =
    the fᵢ, b₁₃ (256 → 256) and the hᵢ between targets 10, 256 ×8 (conv components), 1280,
    256 ×4; affiliated = the gᵢ and b₁ … b₁₂ (conv maps flattened → 256). The backprop CNN
    gets fc256 layers up to the effective count (§3), within one layer's granularity."""
    counts = seed001_cnn_parameter_counts()
    convs = conv_parameter_count(1, [32] * 4 + [64] * 4)
    fc = SEED001_CNN_FC["cnn-seed001"]
    forward = convs + mlp_parameter_count(3136, fc[:-1], fc[-1])
    assert counts["backprop"] == forward + 256 * 10 + 10 == 4_700_586
    targets = [10] + [256] * 8 + [1280] + [256] * 4
    decoders = sum(a * b + a for a, b in zip(targets, targets[1:]))
    assert counts["effective"] == forward + decoders + 256 * 256 + 256
    encoders = sum(a * b + b for a, b in zip(targets, targets[1:]))
    maps = [32 * 28 * 28] * 3 + [32 * 14 * 14] + [64 * 14 * 14] * 3 + [64 * 7 * 7] + list(fc[:-1])
    bridges = sum(size * width + width for size, width in zip(maps, [256] * 8 + list(fc[:-1])))
    assert counts["affiliated"] == encoders + bridges
    widths = counts["backprop_matched_fc_widths"]
    assert widths[:5] == fc and len(widths) > 5 and widths == SEED001_CNN_FC["cnn-seed001-matched"]
    assert counts["backprop_matched"] == convs + mlp_parameter_count(3136, widths, 10)
    assert abs(counts["backprop_matched"] - counts["effective"]) <= 256 * 256 + 256  # one fc256
    assert (counts["effective"], counts["backprop_matched"]) == (6_081_194, 6_081_150)
    with torch.device("meta"):
        matched = build_model("cnn-seed001-matched", (1, 28, 28), 10, batch_norm=False)
    assert sum(p.numel() for p in matched.parameters()) == counts["backprop_matched"]


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


def test_resnet_parameter_counts_and_matched_baselines():
    """§2.4 / §3 on CIFAR-10's ResNets (one-layer bridges, 256-wide targets): effective =
    the residual network without its fc, plus b_K (4096 → 256) and h₄ … h₁; the matched
    backprop baselines come within a few parameters of it."""
    for name, blocks in (("resnet20", 269_722 - 650), ("resnet32", 464_154 - 650)):
        counts = seed001_resnet_parameter_counts(name)
        al_extra = 4096 * 256 + 256 + 3 * (256 * 256 + 256) + 256 * 10 + 10
        assert counts["effective"] == blocks + al_extra
        assert counts["backprop"] == blocks + 650
        assert counts["backprop_matched_fc_widths"] == MATCHED_FC[f"{name}-matched"] == (256, 256, 256, 252)
        with torch.device("meta"):
            matched = build_model(f"{name}-matched", (3, 32, 32), 10)
        assert sum(p.numel() for p in matched.parameters()) == counts["backprop_matched"]
        assert 0 <= counts["effective"] - counts["backprop_matched"] < 256


# ---------------------------------------------------------------- digits


def resnet_quarter_width():
    model = build_model("resnet20", (1, 8, 8), 10, width_multiplier=0.25, activation="elu", batch_norm=True)
    initialize(model, "he")
    return model


# (network, steps of 128 with Adam at 3e-3, bar). Measured on 1 thread, one-layer bridges, ELU:
# - MLP 3×32, 600 steps, seeds 0–2: AL 0.970–0.976; with the fᵢ frozen at their random
#   initialisation (only g, h and the bridges learn) 0.63–0.80.
# - conv 8 (pool) → conv 16 (pool) → linear 32, 256-wide conv targets, 600 steps, seeds 0–2:
#   AL 0.961–0.976; frozen 0.66–0.76. About 4.5 s per run.
# - resnet20 at a quarter width (4, 8, 16 channels) with batch norm, 350 steps, seeds 0, 1, 3:
#   AL 0.97–0.98, after a plateau at chance for about 200 steps while the sigmoid targets
#   separate; frozen at their He-normal initialisation 0.72–0.78. About 11 s (AL), 6 s (frozen).
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
