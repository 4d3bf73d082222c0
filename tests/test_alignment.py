"""The angle between a rule's update and backprop's (seed 002 Fig. 1a) and the total
discrepancy (seed 002 §2, Fig. 1b): closed cases (backprop itself, gradient ascent,
feedback alignment's output layer), feedback alignment's alignment during training
(Lillicrap et al. 2016), and a rule left exactly as it was."""

import copy
import math

import pytest
import torch
from helpers import normalised_digits

from locallearn.analysis.alignment import (angle_between, discrepancy_history, total_discrepancy,
                                           update_alignment)
from locallearn.engine.metrics import MetricsLog
from locallearn.models import build_model
from locallearn.rules import build_rule
from locallearn.rules.base import Rule

ZERO_DEGREES = 1e-3


def digits_mlp(init_seed: int = 0, depth: int = 2, dropout: float = 0.0, batch_norm: bool = True):
    torch.manual_seed(init_seed)
    return build_model("mlp", (1, 8, 8), 10, depth=depth, width=32, dropout=dropout, batch_norm=batch_norm)


def digits_batch(size: int = 128, start: int = 0):
    x_train, y_train, _, _ = normalised_digits()
    return x_train[start:start + size], y_train[start:start + size]


class GradientAscent(Rule):
    """Backprop with the sign of every update flipped: 180° from backprop everywhere."""

    name = "gradient-ascent"

    def __init__(self, model, *, lr: float) -> None:
        super().__init__(model, lr=lr, optimizer="sgd")
        self.optimizer = self.make_optimizer(model.parameters())

    def train_step(self, x, y):
        self.model.train()
        loss = self.model.task.loss(self.model(x), x, y)
        self.optimizer.zero_grad(set_to_none=True)
        (-loss).backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def optimizers(self):
        return [self.optimizer]


class OutputOnly(Rule):
    """Trains the output layer on frozen hidden features; the hidden blocks get no update."""

    name = "output-only"

    def __init__(self, model, *, lr: float) -> None:
        super().__init__(model, lr=lr, optimizer="sgd")
        self.optimizer = self.make_optimizer(model.output.parameters())

    def train_step(self, x, y):
        self.model.train()
        with torch.no_grad():
            for block in self.model.blocks:
                x = block(x)
        loss = self.model.task.loss(self.model.output(x), x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def optimizers(self):
        return [self.optimizer]


@pytest.mark.parametrize("measure", ["gradient", "step"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_backprop_with_sgd_is_aligned_with_itself(measure, dropout):
    """Dropout masks match because both steps start from the same random state."""
    rule = build_rule("backprop", digits_mlp(dropout=dropout), lr=0.01, optimizer="sgd")
    angles = update_alignment(rule, *digits_batch(), measure=measure)
    assert set(angles) == {name for name, _ in rule.model.named_parameters()}
    # "step" differences θ_after − θ_before in float32, which rounds a little.
    tolerance = ZERO_DEGREES if measure == "gradient" else 0.1
    assert all(angle is not None and angle < tolerance for angle in angles.values()), angles


def test_adam_rescaling_shows_in_step_angle_only():
    """Adam's first step is −lr·g/(|g| + ε) ≈ −lr·sign(g): not parallel to g, while the
    gradient it steps with is backprop's own."""
    rule = build_rule("backprop", digits_mlp(), lr=1e-3, optimizer="adam")
    batch = digits_batch()
    gradient = update_alignment(rule, *batch, per="network")["network"]
    step = update_alignment(rule, *batch, measure="step", per="network")["network"]
    assert gradient < ZERO_DEGREES
    assert step > 10


def test_gradient_ascent_is_opposite():
    rule = GradientAscent(digits_mlp(), lr=0.01)
    for measure in ("gradient", "step"):
        angles = update_alignment(rule, *digits_batch(), measure=measure)
        assert all(abs(angle - 180) < 0.1 for angle in angles.values()), (measure, angles)


def test_feedback_alignment_at_init():
    """FA's output layer learns from the true error (angle 0); the hidden layers learn
    from an error sent back through random matrices, nearly orthogonal to backprop's."""
    rule = build_rule("fa", digits_mlp(), lr=0.05, optimizer="sgd")
    angles = update_alignment(rule, *digits_batch())
    assert angles["output.layer.weight"] < ZERO_DEGREES and angles["output.layer.bias"] < ZERO_DEGREES
    hidden = {name: angle for name, angle in angles.items() if name.startswith("blocks.")}
    assert len(hidden) == 6 and all(angle > 60 for angle in hidden.values()), hidden


def test_feedback_alignment_aligns_during_training():
    """Lillicrap et al. 2016: the forward weights come to align with the feedback
    matrices, so the last hidden layer's update turns towards backprop's."""
    rule = build_rule("fa", digits_mlp(), lr=0.05, optimizer="sgd")
    x_train, y_train, _, _ = normalised_digits()
    probe = digits_batch(256)
    before = update_alignment(rule, *probe, per="module")["blocks.1.layer"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        index = torch.randint(len(x_train), (32,), generator=generator)
        rule.train_step(x_train[index], y_train[index])
    after = update_alignment(rule, *probe, per="module")["blocks.1.layer"]
    assert before > 80 and after < 75, (before, after)


def test_untouched_parameters_are_none():
    rule = OutputOnly(digits_mlp(), lr=0.01)
    for measure in ("gradient", "step"):
        angles = update_alignment(rule, *digits_batch(), measure=measure, per="module")
        assert angles["output.layer"] < 0.1
        hidden = [angle for name, angle in angles.items() if name != "output.layer"]
        assert len(hidden) == 4 and all(angle is None for angle in hidden), angles


def test_groupings():
    """Per module and for the whole network, the parameters' updates are concatenated."""
    rule = build_rule("dfa", digits_mlp(), lr=0.01, optimizer="sgd")
    batch = digits_batch()
    per_module = update_alignment(rule, *batch, per="module")
    assert list(per_module) == ["blocks.0.layer", "blocks.0.norm", "blocks.1.layer", "blocks.1.norm", "output.layer"]
    network = update_alignment(rule, *batch, per="network")
    assert list(network) == ["network"] and 0 < network["network"] < 180
    # A one-parameter module's angle is that parameter's.
    per_parameter = update_alignment(rule, *batch)
    assert per_module["blocks.0.layer"] == pytest.approx(per_parameter["blocks.0.layer.weight"], abs=1e-9)


def test_local_rule_leaves_its_own_parameters_out():
    """LRA-E's error weights are updated by the rule but have no backprop counterpart."""
    rule = build_rule("lra-e", digits_mlp(batch_norm=False), lr=0.01, optimizer="sgd")
    angles = update_alignment(rule, *digits_batch())
    assert set(angles) == {name for name, _ in rule.model.named_parameters()}
    assert angles["output.layer.weight"] < ZERO_DEGREES  # its output delta is z − y, backprop's
    assert all(0 < angle < 180 for name, angle in angles.items() if name.startswith("blocks."))


@pytest.mark.parametrize("rule_name", ["backprop", "fa", "predsim", "dtp"])
def test_rule_is_left_exactly_as_it_was(rule_name):
    """State, gradients, training mode and random state are untouched: the rule's next
    step is the one its untouched twin takes."""
    batch_norm = rule_name != "dtp"
    options = {"dim_in_decoder": 32} if rule_name == "predsim" else {}
    rule = build_rule(rule_name, digits_mlp(depth=3, dropout=0.2, batch_norm=batch_norm), lr=1e-3, **options)
    x, y = digits_batch(64)
    rule.train_step(x, y)  # Adam's moments are set, gradients populated
    rule.model.eval()
    twin = copy.deepcopy(rule)
    state = copy.deepcopy(rule.state_dict())
    gradients = {name: parameter.grad.clone() for name, parameter in rule.model.named_parameters()
                 if parameter.grad is not None}
    random_state = torch.get_rng_state()

    update_alignment(rule, x, y)
    update_alignment(rule, x, y, measure="step")

    assert _equal(rule.state_dict(), state)
    assert {name: parameter.grad for name, parameter in rule.model.named_parameters()
            if parameter.grad is not None}.keys() == gradients.keys()
    assert all(torch.equal(rule.model.get_parameter(name).grad, gradient) for name, gradient in gradients.items())
    assert not rule.model.training
    assert torch.equal(torch.get_rng_state(), random_state)
    next_x, next_y = digits_batch(64, start=64)
    torch.manual_seed(1)
    rule.train_step(next_x, next_y)
    torch.manual_seed(1)
    twin.train_step(next_x, next_y)
    assert _equal(rule.state_dict(), twin.state_dict())


def test_bad_arguments():
    rule = build_rule("backprop", digits_mlp(), lr=0.01)
    with pytest.raises(ValueError, match="measure"):
        update_alignment(rule, *digits_batch(), measure="adam")
    with pytest.raises(ValueError, match="per"):
        update_alignment(rule, *digits_batch(), per="layer")
    with pytest.raises(TypeError, match="Rule"):
        update_alignment(rule.model, *digits_batch())


def test_angle_between():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert angle_between(a, torch.tensor([0.0, 2.0, 0.0])) == pytest.approx(90)
    assert angle_between(a, torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(45)
    assert angle_between(a, -3 * a) == pytest.approx(180)
    tiny = 1e-7  # radians: acos(cos θ) would round this to 0
    assert angle_between(a, torch.tensor([math.cos(tiny), math.sin(tiny), 0.0], dtype=torch.float64)) == \
        pytest.approx(math.degrees(tiny), rel=1e-6)
    with pytest.raises(ValueError, match="zero"):
        angle_between(a, torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        angle_between(a, torch.ones(4))


def test_total_discrepancy_sums_the_local_losses():
    metrics = {"loss": torch.tensor(9.0), "loss/block0": torch.tensor(1.0), "loss/block1": 2.0,
               "loss/output": torch.tensor(4.0), "loss/inverse1": 100.0, "loss/inverse_output": 200.0,
               "loss/feedback0": 300.0, "noise/inverse1": 0.5, "train_error": 0.25}
    assert total_discrepancy(metrics) == 7.0
    assert total_discrepancy(metrics, include_output=False) == 3.0
    with pytest.raises(ValueError, match="no local losses"):
        total_discrepancy({"loss": 1.0, "train_error": 0.5})


def test_total_discrepancy_of_lra_e():
    """Seed 002: D = the output's NLL plus every hidden layer's local loss."""
    rule = build_rule("lra-e", digits_mlp(depth=3, batch_norm=False), lr=0.01, optimizer="sgd")
    metrics = rule.train_step(*digits_batch())
    hidden = [metrics[f"loss/block{index}"] for index in range(3)]
    assert total_discrepancy(metrics) == pytest.approx(float(sum(hidden) + metrics["loss/output"]))


def test_total_discrepancy_of_associated_learning():
    """AL's forward losses (eq. (6)) are its local losses; its inverse losses (eq. (5)) train
    the target path and are left out."""
    rule = build_rule("al", digits_mlp(depth=2, batch_norm=False), lr=1e-3)
    metrics = rule.train_step(*digits_batch())
    forward = [metrics[f"loss/forward{index}"] for index in range(2)]
    assert total_discrepancy(metrics) == pytest.approx(float(sum(forward)))


def test_discrepancy_history(tmp_path):
    log = MetricsLog(tmp_path)
    log.write({"kind": "step", "epoch": 1, "step": 10, "loss": 2.0, "loss/block0": 1.0, "loss/output": 2.0})
    log.write({"kind": "step", "epoch": 1, "step": 20, "loss": 1.5, "loss/block0": 0.5, "loss/output": 1.5})
    log.write({"kind": "epoch", "epoch": 1, "step": 20, "loss/block0": 0.75, "loss/output": 1.75,
               "test_loss": 9.0})
    log.close()
    assert discrepancy_history(tmp_path) == [(10, 3.0), (20, 2.0)]
    assert discrepancy_history(tmp_path, kind="epoch") == [(20, 2.5)]
    assert discrepancy_history(tmp_path, include_output=False) == [(10, 1.0), (20, 0.5)]
    with pytest.raises(ValueError, match="metrics.jsonl"):
        discrepancy_history(tmp_path / "missing")
    with pytest.raises(ValueError, match="kind"):
        discrepancy_history(tmp_path, kind="batch")


def _equal(a, b) -> bool:
    """Deep equality of nested state dicts holding tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b
