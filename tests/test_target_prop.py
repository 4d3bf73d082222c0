"""Target propagation (seed 003 §2.1.2, eq. (2), Algorithms 1–2, §5.6; seed 002 §2.2,
eqs. (8)–(10)) against closed forms: targets through exact inverses, the difference
correction cancelling a wrong inverse, DTP-σ's noise levels by hand, hybrid targets
against backprop; inverse training, the alternating schedule, checkpoints, refused
networks, and accuracy on scikit-learn's digits above what untrained hidden layers give."""

import copy
import functools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import digits_test_accuracy, normalised_digits, relative_error
from locallearn.models import build_model
from locallearn.ops import difference_target, locally_connected2d_transpose
from locallearn.rules import build_rule
from locallearn.rules import inverses as inverses_module
from locallearn.rules.target_prop import RULES, widened

RULE_NAMES = tuple(RULES)
GRADIENT_TOP_TARGET = {"dtp": True, "dtp-sigma": True, "sdtp": False, "ao-sdtp": False}


def small_mlp(width=12, depth=3, num_classes=5, activation="tanh", dtype=torch.float64, dropout=0.0, init_seed=0):
    torch.manual_seed(init_seed)
    model = build_model("mlp", (width,), num_classes, depth=depth, width=width, activation=activation,
                        batch_norm=False, dropout=dropout)
    return model.to(dtype)


def make_rule(name, model=None, **options):
    model = small_mlp() if model is None else model
    if name == "ao-sdtp":
        options.setdefault("aux_features", 16)
    return RULES[name](model, lr=options.pop("lr", 1e-3), **options)


def batch(model, generator, size=8, scale=1.0):
    x = scale * torch.randn(size, *model.input_shape, generator=generator, dtype=next(model.parameters()).dtype)
    return x, torch.randperm(size, generator=generator) % model.num_classes


def module_state(module):
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def cosine(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def backprop_gradients(model, x, y):
    """∂(mean cross-entropy)/∂θ for every parameter of a copy of ``model``."""
    model = copy.deepcopy(model)
    F.cross_entropy(model(x), y).backward()
    return {name: parameter.grad for name, parameter in model.named_parameters()}


def sgd_updates(rule, x, y):
    """θ_after − θ_before of one train_step, by parameter name."""
    before = {name: p.detach().clone() for name, p in rule.model.named_parameters()}
    rule.train_step(x, y)
    return {name: p.detach() - before[name] for name, p in rule.model.named_parameters()}


# ---------------------------------------------------------------- exact inverses


ACTIVATION_INVERSES = {"tanh": torch.atanh, "leaky_relu": lambda h: torch.where(h > 0, h, h / 0.01)}


class ExactInverse(nn.Module):
    """f⁻¹(h) = W⁻¹(σ⁻¹(h) − b) of a square block. W and b are parameters only so that the
    rule's reconstruction loss has something to differentiate; no optimiser holds them."""

    def __init__(self, layer: nn.Linear, activation: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())
        self.inverse_activation = ACTIVATION_INVERSES[activation]

    def forward(self, h):
        return torch.linalg.solve(self.weight, (self.inverse_activation(h) - self.bias).T).T


def invertible_rule(activation, generator, **options):
    """DTP on a float64 MLP of square orthogonal layers whose inverses are exact."""
    model = small_mlp(width=8, depth=4, num_classes=5, activation=activation)
    for block in model.blocks:
        nn.init.orthogonal_(block.layer.weight, generator=generator)
        nn.init.uniform_(block.layer.bias, -0.1, 0.1, generator=generator)
    rule = make_rule("dtp", model, **options)
    for k in range(1, len(model.blocks)):
        rule.inverses[f"block{k}"] = ExactInverse(model.blocks[k].layer, activation)
    return rule


@pytest.mark.parametrize("activation", ["tanh", "leaky_relu"])
def test_exact_inverses_give_closed_form_targets(activation, generator):
    """Top: ĥ_{L−1} = h_{L−1} − α W_oᵀ(softmax − onehot) for each example; below, eq. (2)
    with g = f⁻¹ gives ĥ_{ℓ−1} = f_ℓ⁻¹(ĥ_ℓ) exactly (the correction term is then zero)."""
    rule = invertible_rule(activation, generator, target_step=0.05)
    model = rule.model
    x, y = batch(model, generator, scale=0.5)
    activities, targets = rule.targets(x, y)

    h, expected_activities = x, []
    for block in model.blocks:
        h = model.blocks[0].activation(h @ block.layer.weight.T + block.layer.bias)
        expected_activities.append(h)
    for activity, expected in zip(activities, expected_activities):
        torch.testing.assert_close(activity, expected, rtol=1e-12, atol=1e-12)

    output = model.output.layer
    probabilities = (h @ output.weight.T + output.bias).softmax(dim=1)
    top = h - 0.05 * (probabilities - F.one_hot(y, 5).double()) @ output.weight
    torch.testing.assert_close(targets[-1], top, rtol=1e-12, atol=1e-12)
    inverse_activation = ACTIVATION_INVERSES[activation]
    for k in range(len(model.blocks) - 1, 0, -1):
        layer = model.blocks[k].layer
        expected = (inverse_activation(targets[k]) - layer.bias) @ torch.linalg.inv(layer.weight).T
        torch.testing.assert_close(targets[k - 1], expected, rtol=1e-10, atol=1e-10)
        assert (targets[k - 1] - activities[k - 1]).abs().max() > 1e-4  # the targets did move


def test_exact_inverse_updates_align_with_backprop_for_small_steps(generator):
    """With exact inverses and a small step α every hidden layer's DTP update points along
    −∂L/∂θ: the top hidden layer exactly (its target is a gradient step: the local loss's
    gradient is 2α times backprop's), the lower ones up to Gauss–Newton's J⁻¹ in place of Jᵀ."""
    rule = invertible_rule("tanh", generator, target_step=1e-4, optimizer="sgd", lr=1.0)
    x, y = batch(rule.model, generator, size=16, scale=0.5)
    bp = backprop_gradients(rule.model, x, y)
    updates = sgd_updates(rule, x, y)
    top = len(rule.model.blocks) - 1
    torch.testing.assert_close(updates[f"blocks.{top}.layer.weight"], -2e-4 * bp[f"blocks.{top}.layer.weight"],
                               rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(updates["output.layer.weight"], -bp["output.layer.weight"], rtol=1e-12, atol=1e-14)
    for k in range(top):
        name = f"blocks.{k}.layer.weight"
        assert cosine(-updates[name], bp[name]) > 0.4, (k, cosine(-updates[name], bp[name]))


def test_difference_correction_cancels_a_wrong_inverse(generator):
    """Eq. (2): ĥ_ℓ = h_ℓ gives ĥ_{ℓ−1} = h_{ℓ−1} whatever g is. With untrained inverses (far
    from f⁻¹: vanilla TP's g(h_ℓ) misses h_{ℓ−1} by O(1)) and a top target 1e-9 from h_{L−1},
    every lower target stays within O(1e-9) of its activity."""
    rule = make_rule("dtp", target_step=1e-9)
    x, y = batch(rule.model, generator)
    activities, targets = rule.targets(x, y)
    top_distance = (targets[-1] - activities[-1]).norm()
    assert 0 < top_distance < 1e-8
    for k in range(len(activities) - 1, 0, -1):
        with torch.no_grad():
            reconstruction = rule.inverses[f"block{k}"](activities[k])
        assert (reconstruction - activities[k - 1]).norm() > 0.1  # g is far from f⁻¹
        assert (targets[k - 1] - activities[k - 1]).norm() < 1e-7


# ---------------------------------------------------------------- DTP-σ's noise


def test_dtp_sigma_noise_levels_by_hand():
    """A 2-2-2-2 tanh network with 2 classes, weights and inverses set by hand:
    ĥ_3 = h_3 − α W_oᵀ(p − onehot), ĥ_{ℓ−1} = h_{ℓ−1} − tanh(V_ℓ h_ℓ + c_ℓ) + tanh(V_ℓ ĥ_ℓ + c_ℓ)
    (eq. (8) with DTP's sign), σ_4 = α, σ_3 = σ_4 − ‖ĥ_2 − h_2‖², σ_2 = σ_3 − ‖ĥ_1 − h_1‖²
    (eq. (10)), per example; g_3 learns with σ_3, g_2 with σ_2."""
    tensor = functools.partial(torch.tensor, dtype=torch.float64)
    model = small_mlp(width=2, depth=3, num_classes=2)
    weights = [tensor([[1.0, -0.5], [0.5, 1.0]]), tensor([[0.8, 0.3], [-0.6, 0.9]]), tensor([[1.2, 0.0], [0.4, -1.1]])]
    biases = [tensor([0.1, -0.2]), tensor([0.0, 0.3]), tensor([-0.1, 0.2])]
    with torch.no_grad():
        for block, weight, bias in zip(model.blocks, weights, biases):
            block.layer.weight.copy_(weight)
            block.layer.bias.copy_(bias)
        model.output.layer.weight.copy_(tensor([[2.0, -1.0], [-1.5, 1.0]]))
        model.output.layer.bias.copy_(tensor([0.2, -0.2]))
    alpha = 0.5
    rule = make_rule("dtp-sigma", model, target_step=alpha)
    inverses = {2: (tensor([[0.7, -0.2], [0.1, 0.9]]), tensor([0.05, -0.05])),
                3: (tensor([[1.1, 0.4], [-0.3, 0.6]]), tensor([0.0, 0.1]))}
    with torch.no_grad():
        for layer, (v, c) in inverses.items():
            rule.inverses[f"block{layer - 1}"].layer.weight.copy_(v)
            rule.inverses[f"block{layer - 1}"].layer.bias.copy_(c)
    x, y = tensor([[0.5, -1.0], [-0.3, 0.8]]), torch.tensor([1, 0])

    h = {0: x}
    for layer in (1, 2, 3):
        h[layer] = torch.tanh(h[layer - 1] @ weights[layer - 1].T + biases[layer - 1])
    w_o, b_o = model.output.layer.weight.detach(), model.output.layer.bias.detach()
    p = torch.softmax(h[3] @ w_o.T + b_o, dim=1)
    target = {3: h[3] - alpha * (p - F.one_hot(y, 2).double()) @ w_o}
    for layer in (3, 2):
        v, c = inverses[layer]
        target[layer - 1] = (h[layer - 1] - torch.tanh(h[layer] @ v.T + c)
                             + torch.tanh(target[layer] @ v.T + c))
    sigma = {4: torch.full((2, 1), alpha)}
    for layer in (3, 2):
        sigma[layer] = sigma[layer + 1] - (target[layer - 1] - h[layer - 1]).pow(2).sum(1, keepdim=True)

    activities, targets = rule.targets(x, y)
    for layer in (1, 2, 3):
        torch.testing.assert_close(targets[layer - 1], target[layer], rtol=1e-12, atol=1e-12)
    levels = rule.noise_levels(activities, targets)
    assert levels.keys() == {"block1", "block2"}
    torch.testing.assert_close(levels["block2"], sigma[3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(levels["block1"], sigma[2], rtol=1e-12, atol=1e-12)
    assert (sigma[4] - sigma[3]).abs().min() > 1e-3 and (sigma[3] - sigma[2]).abs().min() > 1e-3
    metrics = rule.train_step(x, y)
    assert metrics["noise/inverse2"].item() == pytest.approx(sigma[3].mean().item(), rel=1e-12)
    assert metrics["noise/inverse1"].item() == pytest.approx(sigma[2].mean().item(), rel=1e-12)


# ---------------------------------------------------------------- hybrid targets (§5.6)


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_hybrid_alpha_one_is_backprop(rule_name, generator):
    """g = g_bp everywhere: every hidden layer's update is backprop's times 2α (DTP family,
    whose top target is an α-step) or 2 (SDTP family); the output layer's is backprop's."""
    step_options = {"target_step": 0.1} if GRADIENT_TOP_TARGET[rule_name] else {}
    rule = make_rule(rule_name, hybrid_alpha=1.0, optimizer="sgd", lr=1.0, **step_options)
    x, y = batch(rule.model, generator)
    bp = backprop_gradients(rule.model, x, y)
    updates = sgd_updates(rule, x, y)
    scale = 0.2 if GRADIENT_TOP_TARGET[rule_name] else 2.0
    for name, update in updates.items():
        expected = -bp[name] if name.startswith("output") else -scale * bp[name]
        torch.testing.assert_close(update, expected, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_hybrid_alpha_zero_is_pure_target_propagation(rule_name, generator):
    """α = 0 gives eq. (2) through the learned inverses (nothing of g_bp), from SDTP's
    ĥ_{L−1} = h_{L−1} − g_L(o) + g_L(ô) (eq. (3) with z for AO-SDTP); the hidden updates are
    then not backprop's direction."""
    rule = make_rule(rule_name, optimizer="sgd", lr=1.0)
    model = rule.model
    x, y = batch(model, generator)
    activities, targets = rule.targets(x, y)
    with torch.no_grad():
        if "output" in rule.inverses:
            h_top, g = activities[-1], rule.inverses["output"]
            z = [rule.auxiliary(h_top)] if rule_name == "ao-sdtp" else []
            o = torch.cat([model.output(h_top).softmax(dim=1), *z], dim=1)
            o_hat = torch.cat([F.one_hot(y, model.num_classes).double(), *z], dim=1)
            torch.testing.assert_close(targets[-1], h_top - g(o) + g(o_hat), rtol=1e-12, atol=1e-12)
        for k in range(len(activities) - 1, 0, -1):
            g = rule.inverses[f"block{k}"]
            torch.testing.assert_close(targets[k - 1], activities[k - 1] - g(activities[k]) + g(targets[k]),
                                       rtol=1e-12, atol=1e-12)
    bp = backprop_gradients(rule.model, x, y)
    updates = sgd_updates(rule, x, y)
    for k in range(len(rule.model.blocks) - 1):
        name = f"blocks.{k}.layer.weight"
        assert cosine(-updates[name], bp[name]) < 0.99


@pytest.mark.parametrize("rule_name", ["dtp", "sdtp"])
def test_hybrid_targets_mix_the_inverses(rule_name, generator):
    """0 < α < 1: ĥ_{ℓ−1} = h_{ℓ−1} + α Jᵀ(ĥ_ℓ − h_ℓ) + (1 − α)(g(ĥ_ℓ) − g(h_ℓ)), J = ∂h_ℓ/∂h_{ℓ−1}
    = diag(1 − h_ℓ²) W_ℓ for tanh; SDTP's top target mixes −∂L_n/∂h_{L−1} and g_L(ô) − g_L(o)."""
    alpha = 0.3
    rule = make_rule(rule_name, hybrid_alpha=alpha)
    model = rule.model
    x, y = batch(model, generator)
    activities, targets = rule.targets(x, y)
    output = model.output.layer
    h_top = activities[-1]
    error = (h_top @ output.weight.T + output.bias).softmax(dim=1) - F.one_hot(y, model.num_classes).double()
    if rule_name == "sdtp":
        g = rule.inverses["output"]
        with torch.no_grad():
            inverse_step = g(F.one_hot(y, model.num_classes).double()) - g((h_top @ output.weight.T + output.bias)
                                                                           .softmax(dim=1))
        expected_top = h_top - alpha * error @ output.weight + (1 - alpha) * inverse_step
        torch.testing.assert_close(targets[-1], expected_top, rtol=1e-12, atol=1e-12)
    for k in range(len(activities) - 1, 0, -1):
        g, weight = rule.inverses[f"block{k}"], model.blocks[k].layer.weight.detach()
        with torch.no_grad():
            inverse_step = g(targets[k]) - g(activities[k])
        jacobian_step = ((1 - activities[k] ** 2) * (targets[k] - activities[k])) @ weight
        expected = activities[k - 1] + alpha * jacobian_step + (1 - alpha) * inverse_step
        torch.testing.assert_close(targets[k - 1], expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- inverse training and schedule


def reconstruction_errors(rule, x, noise, denoising):
    """‖g_ℓ(f_ℓ(h_{ℓ−1} + ε)) − (h_{ℓ−1} + ε)‖² (or − h_{ℓ−1} when denoising), batch mean, per inverse,
    with fixed ε."""
    errors = {}
    with torch.no_grad():
        rule.model.eval()
        h = [x]
        for block in rule.model.blocks:
            h.append(block(h[-1]))
        for key, inverse in rule.inverses.items():
            if key == "output":
                below = h[-1] + noise[-1]
                encoded = rule.model.output(below).softmax(dim=1)
                if hasattr(rule, "auxiliary"):
                    encoded = torch.cat([encoded, rule.auxiliary(below)], dim=1)
                clean = h[-1]
            else:
                k = int(key.removeprefix("block"))
                below = h[k] + noise[k]
                encoded, clean = rule.model.blocks[k](below), h[k]
            target = clean if denoising else below
            errors[key] = (inverse(encoded) - target).pow(2).sum(1).mean().item()
    return errors


@pytest.mark.parametrize("rule_name, denoising", [("dtp", False), ("sdtp", True), ("ao-sdtp", True)])
def test_inverse_training_reduces_reconstruction_error(rule_name, denoising, generator):
    """An inverse epoch (forward weights fixed) on corrupted activity lowers every inverse's
    reconstruction error on a held-out batch with its own fixed noise."""
    sigma = 0.1
    rule = make_rule(rule_name, inverse_noise=sigma, lr=3e-2, schedule="alternating")
    rule.begin_epoch(0)
    x_test, _ = batch(rule.model, generator, size=64)
    widths = [x_test.shape[1]] + [block.layer.out_features for block in rule.model.blocks]
    noise = [sigma * torch.randn(64, width, generator=generator, dtype=torch.float64) for width in widths]
    before = reconstruction_errors(rule, x_test, noise, denoising)
    for _ in range(40):
        rule.train_step(*batch(rule.model, generator, size=32))
    after = reconstruction_errors(rule, x_test, noise, denoising)
    assert before.keys() == set(rule.inverses)
    for key in before:
        assert after[key] < 0.5 * before[key], (key, before[key], after[key])


@pytest.mark.parametrize("rule_name, denoising", [("dtp", False), ("dtp-sigma", False), ("sdtp", True),
                                                 ("ao-sdtp", True)])
def test_inverse_losses_on_known_noise(rule_name, denoising, generator, monkeypatch):
    """With every N(0, 1) draw replaced by 1, ε = σ: each reported inverse loss is
    ‖g_ℓ(f_ℓ(h_{ℓ−1} + σ)) − (h_{ℓ−1} + σ)‖² for DTP and DTP-σ (noise-preserving, eq. (9)) and
    ‖g_ℓ(f_ℓ(h_{ℓ−1} + σ)) − h_{ℓ−1}‖² for SDTP (denoising, seed 003 §5.1), σ being DTP-σ's
    per-example σ_ℓ of eq. (10) (checked by hand above) or the rule's ``inverse_noise``."""
    rule = make_rule(rule_name, **({} if rule_name == "dtp-sigma" else {"inverse_noise": 0.2}))
    x, y = batch(rule.model, generator)
    activities, targets = rule.targets(x, y)
    levels = rule.noise_levels(activities, targets)
    widths = [x.shape[1]] + [block.layer.out_features for block in rule.model.blocks]
    noise = [torch.full((len(x), width), 0.2, dtype=torch.float64) for width in widths]
    for key, level in levels.items():
        if key != "output":
            k = int(key.removeprefix("block"))
            noise[k] = level * torch.ones(len(x), widths[k], dtype=torch.float64)
    expected = reconstruction_errors(copy.deepcopy(rule), x, noise, denoising)
    monkeypatch.setattr(torch, "randn_like", torch.ones_like)
    metrics = rule.train_step(x, y)
    for key, value in expected.items():
        name = "loss/inverse_output" if key == "output" else f"loss/inverse{key.removeprefix('block')}"
        assert metrics[name].item() == pytest.approx(value, rel=1e-10), key


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_alternating_schedule(rule_name, generator):
    """Seed 003 §2.1.2: inverse epochs leave every forward weight (hidden and output) alone,
    forward epochs leave the inverses alone, in turn from epoch 0; parallel changes both."""
    rule = make_rule(rule_name, schedule="alternating")
    x, y = batch(rule.model, generator)
    for epoch in range(4):
        rule.begin_epoch(epoch)
        model, inverses = module_state(rule.model), module_state(rule.inverses)
        metrics = rule.train_step(x, y)
        inverse_epoch = epoch % 2 == 0
        assert states_equal(module_state(rule.model), model) == inverse_epoch, epoch
        assert states_equal(module_state(rule.inverses), inverses) != inverse_epoch, epoch
        assert any(key.startswith("loss/inverse") for key in metrics) == inverse_epoch
    parallel = make_rule(rule_name)
    model, inverses = module_state(parallel.model), module_state(parallel.inverses)
    parallel.begin_epoch(1)
    parallel.train_step(x, y)
    assert not states_equal(module_state(parallel.model), model)
    assert not states_equal(module_state(parallel.inverses), inverses)


# ---------------------------------------------------------------- checkpoints and refused networks


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_state_dict_round_trip(rule_name, tmp_path, generator):
    """Save after a few steps, load into a rule built with other initial weights and inverse
    seed: the next step (same noise and dropout draws) leaves both bit-identical."""
    rule = make_rule(rule_name, small_mlp(dropout=0.1, init_seed=0), seed=0)
    x, y = batch(rule.model, generator)
    for _ in range(3):
        rule.train_step(x, y)
    path = tmp_path / "rule.pt"
    torch.save(rule.state_dict(), path)
    fresh = make_rule(rule_name, small_mlp(dropout=0.1, init_seed=1), seed=1)
    assert not states_equal(module_state(fresh.trainable_modules()), module_state(rule.trainable_modules()))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert states_equal(module_state(fresh.trainable_modules()), module_state(rule.trainable_modules()))
    for each in (rule, fresh):
        torch.manual_seed(7)
        each.train_step(x, y)
    assert states_equal(module_state(fresh.trainable_modules()), module_state(rule.trainable_modules()))
    with pytest.raises(ValueError):
        make_rule("dtp" if rule_name != "dtp" else "sdtp").load_state_dict(rule.state_dict())


def test_conv_network_is_refused_for_want_of_inverses():
    model = build_model("vgg8b", (3, 16, 16), 10, width_multiplier=1 / 16, batch_norm=False)
    for name in RULE_NAMES:
        with pytest.raises(ValueError, match="convolution"):
            RULES[name](model, lr=1e-3)


# ---------------------------------------------------------------- locally-connected layers


def small_lc_network(dtype=torch.float64):
    """lc-mnist (3×3/2 LC, 3×3/2 LC, FC, output) on 1×9×9 inputs, channels scaled down."""
    torch.manual_seed(0)
    model = build_model("lc-mnist", (1, 9, 9), 4, width_multiplier=0.125, activation="tanh", batch_norm=False)
    return model.to(dtype)


def test_locally_connected_inverse_is_the_transpose_map(generator):
    """Seed 003 §5.4: g(h) = σ(LCᵀ(h; V) + c), V of the forward layer's layout and
    geometry, Glorot-drawn from the rule's seed; it maps block k's output to its input."""
    rule = make_rule("dtp", small_lc_network())
    block = rule.model.blocks[1]
    inverse = rule.inverses["block1"]
    assert inverse.layer.weight.shape == block.layer.weight.shape
    assert 0.9 * inverse.layer.glorot_bound < inverse.layer.weight.abs().max() <= inverse.layer.glorot_bound
    h = torch.randn(3, *rule.model.block_shapes[1], generator=generator, dtype=torch.float64)
    with torch.no_grad():
        inverse.layer.bias.normal_(generator=generator)
        expected = torch.tanh(locally_connected2d_transpose(h, inverse.layer.weight, block.layer.input_size,
                                                            **block.layer.window()) + inverse.layer.bias)
        torch.testing.assert_close(inverse(h), expected, rtol=1e-12, atol=1e-12)
    assert inverse(h).shape == (3, *rule.model.block_shapes[0])
    again = make_rule("dtp", small_lc_network())
    assert torch.equal(again.inverses["block1"].layer.weight, inverse.layer.weight)


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_locally_connected_targets_follow_eq_2(rule_name, generator):
    """ĥ_{ℓ−1} = h_{ℓ−1} + g_ℓ(ĥ_ℓ) − g_ℓ(h_ℓ) through the LC transpose inverses and the FC
    inverse above them (which reshapes to the LC activity), and the top target as the
    variant defines it; the local losses sum over channels and locations."""
    rule = make_rule(rule_name, small_lc_network())
    x, y = batch(rule.model, generator)
    activities, targets = rule.targets(x, y)
    assert [t.shape for t in targets] == [a.shape for a in activities]
    for k in range(len(activities) - 1, 0, -1):
        inverse = rule.inverses[f"block{k}"]
        with torch.no_grad():
            expected = activities[k - 1] + inverse(targets[k]) - inverse(activities[k])
        torch.testing.assert_close(targets[k - 1], expected, rtol=1e-10, atol=1e-12)
    metrics = rule.train_step(x, y)
    for k, (activity, target) in enumerate(zip(activities, targets)):
        expected_loss = (activity - target).pow(2).flatten(1).sum(1).mean()
        torch.testing.assert_close(metrics[f"loss/block{k}"], expected_loss, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- the fused difference target


def unfused_targets(rule, x, y):
    """The targets as TargetPropagation._targets computed them before the fused op: each
    inverse run twice under the rule's autocast,
    ĥ_{ℓ−1} = h_{ℓ−1} + (1 − α)(g(ĥ_ℓ) − g(h_ℓ)) + α Jᵀ(ĥ_ℓ − h_ℓ)."""
    rule.model.train()
    inputs, activities, logits = rule._forward(x)
    alpha = rule.hybrid_alpha
    targets = [rule._top_target(inputs[-1], logits, x, y)]
    for k in range(len(activities) - 1, 0, -1):
        h, h_target, h_below = activities[k], targets[0], inputs[k]
        step = widened(torch.zeros_like(h_below))
        if alpha < 1:
            with torch.no_grad(), rule.autocast():
                inverse = rule.inverses[f"block{k}"]
                step += (1 - alpha) * widened(inverse(h_target.to(h.dtype)) - inverse(h.detach()))
        if alpha > 0:
            jacobian_t = torch.autograd.grad(h, h_below, grad_outputs=(h_target - widened(h.detach())).to(h.dtype),
                                             retain_graph=True)[0]
            step += alpha * widened(jacobian_t)
        targets.insert(0, widened(h_below.detach()) + step)
    return targets


@pytest.mark.parametrize("network", ["mlp", "lc"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "elu"])
@pytest.mark.parametrize("rule_name, alpha", [("dtp", 0.0), ("sdtp", 0.0), ("dtp-sigma", 0.3)])
def test_fused_targets_equal_the_unfused_formula(rule_name, alpha, activation, network, generator, monkeypatch):
    """float32: the targets through the fused op (every fully-connected inverse: all of an
    MLP's, the one above the LC blocks) equal the inverses run twice, to float32 rounding."""
    torch.manual_seed(0)
    if network == "mlp":
        model = small_mlp(activation=activation, dtype=torch.float32)
    else:
        model = build_model("lc-mnist", (1, 9, 9), 4, width_multiplier=0.125, activation=activation,
                            batch_norm=False)
    rule = make_rule(rule_name, model, hybrid_alpha=alpha)
    fused = [key for key, inverse in rule.inverses.items() if key != "output" and inverse.fused_activation]
    assert fused == (list(rule.inverses)[:2] if network == "mlp" else ["block2"])
    calls = []
    monkeypatch.setattr(inverses_module, "difference_target", lambda *args: calls.append(1) or difference_target(*args))
    x, y = batch(model, generator)
    _, targets = rule.targets(x, y)
    assert len(calls) == len(fused)
    for got, expected in zip(targets, unfused_targets(rule, x, y), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_fused_targets_under_amp_are_float32(generator):
    """With amp the fused op runs on the float32 (widened) activities and weights, where the
    inverses ran in bfloat16: the targets agree to bfloat16 rounding and stay float32."""
    rule = make_rule("dtp", small_mlp(dtype=torch.float32, width=32), amp=True)
    x, y = batch(rule.model, generator)
    _, targets = rule.targets(x, y)
    for got, expected in zip(targets, unfused_targets(rule, x, y), strict=True):
        assert got.dtype == torch.float32
        assert relative_error(got, expected) < 2e-2


@pytest.mark.parametrize("options, message", [
    (dict(batch_norm=True), "batch_norm=False"), (dict(depth=1), "two hidden blocks"),
])
def test_unsupported_mlp_is_refused(options, message):
    model = build_model("mlp", (8,), 3, **{"depth": 3, "width": 8, "batch_norm": False, **options})
    with pytest.raises(ValueError, match=message):
        RULES["dtp"](model, lr=1e-3)


@pytest.mark.parametrize("rule_name, options", [
    ("dtp", dict(target_step=0.0)), ("dtp", dict(inverse_noise=-0.1)), ("sdtp", dict(schedule="sometimes")),
    ("dtp-sigma", dict(hybrid_alpha=1.5)), ("ao-sdtp", dict(aux_features=0)), ("sdtp", dict(inverse_lr=0.0)),
])
def test_bad_options_are_refused(rule_name, options):
    with pytest.raises(ValueError):
        make_rule(rule_name, **options)


def test_amp_step_runs():
    rule = make_rule("ao-sdtp", small_mlp(dtype=torch.float32), amp=True)
    x, y = batch(rule.model, torch.Generator().manual_seed(0))
    metrics = rule.train_step(x, y)
    assert all(torch.isfinite(value) for value in metrics.values())


# ---------------------------------------------------------------- accuracy on real data


DIGITS_STEPS = 300


def digits_accuracy(rule_name: str, *, lr: float, steps: int = DIGITS_STEPS, freeze_hidden: bool = False) -> float:
    """Test accuracy of a 3×256 tanh MLP (no batch norm) after ``steps`` batches of 128."""
    x_train = normalised_digits()[0]
    torch.manual_seed(0)
    model = build_model("mlp", tuple(x_train.shape[1:]), 10, depth=3, width=256, activation="tanh",
                        batch_norm=False)
    if freeze_hidden:
        model.blocks.requires_grad_(False)
    rule = build_rule(rule_name, model, lr=lr) if rule_name == "backprop" else RULES[rule_name](model, lr=lr)
    return digits_test_accuracy(rule, steps)


# Adam, 300 steps of 128, seed 0, measured on CPU (other seeds in brackets: seeds 1, 2):
# dtp 0.976 [0.976, 0.974], dtp-sigma 0.980 [0.976, 0.974], sdtp 0.983 [0.976, 0.972],
# ao-sdtp 0.972 [0.970, 0.970]; backprop 0.976 (lr 3e-3). Random frozen tanh layers with a
# trained output layer reach 0.926 at lr 3e-3 and at best 0.959 over rates 1e-3 … 0.1 [0.974,
# 0.961]: digits are easy for random features, so the bars sit 1–2 points above that best,
# and on seed 1 no rule (nor backprop, 0.980) clears it by more than a test image or two.
DIGITS_LR = {"dtp": 3e-3, "dtp-sigma": 3e-3, "sdtp": 3e-3, "ao-sdtp": 1e-3}
MLP_BARS = {"dtp": 0.97, "dtp-sigma": 0.97, "sdtp": 0.975, "ao-sdtp": 0.965}


@pytest.fixture(scope="module")
def frozen_accuracy():
    """The best an output layer on random frozen tanh layers does in the same budget, over
    the rules' rate and two higher ones."""
    return max(digits_accuracy("backprop", lr=lr, freeze_hidden=True) for lr in (3e-3, 3e-2, 1e-1))


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_mlp_learns_digits(rule_name, frozen_accuracy):
    accuracy = digits_accuracy(rule_name, lr=DIGITS_LR[rule_name])
    assert MLP_BARS[rule_name] > frozen_accuracy > 0.1  # the bar means the hidden layers learned
    assert accuracy >= MLP_BARS[rule_name], f"{rule_name}: {accuracy:.3f}"
