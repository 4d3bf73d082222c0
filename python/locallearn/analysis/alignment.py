"""How far a learning rule's update points from backprop's (seed 002 Fig. 1a), and the
total discrepancy, the sum of a rule's local losses (seed 002 §2, Fig. 1b).

The angle is measured on a copy of the rule, so the rule itself, its optimisers and
the random number generators are left exactly as they were.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from locallearn.engine.metrics import read_metrics
from locallearn.nn import (Conv2dFeedbackAlignment, LinearFeedbackAlignment, LocallyConnected2d,
                           LocallyConnectedFeedbackAlignment)
from locallearn.rules.base import Rule

MEASURES = ("gradient", "step")
GROUPINGS = ("parameter", "module", "network")
LOCAL_LOSS_KEY = re.compile(r"loss/(block\d+|forward\d+|output)")
"""The per-layer losses of the forward pathway (``loss/block<k>``, AL's ``loss/forward<k>``,
``loss/output``). The feedback pathway's own losses (``loss/inverse<k>``,
``loss/feedback<k>``) train the inverses, not the representations, and are no part of the
discrepancy."""

# Feedback-alignment layers send the error back through B instead of W; backprop's
# gradient needs the forward function of the layer they replace, whose backward uses W.
_EXACT_FORWARD = {
    LinearFeedbackAlignment: nn.Linear.forward,
    Conv2dFeedbackAlignment: nn.Conv2d.forward,
    LocallyConnectedFeedbackAlignment: LocallyConnected2d.forward,
}


def update_alignment(rule: Rule, x: Tensor, y: Tensor, *, measure: str = "gradient",
                     per: str = "parameter") -> dict[str, float | None]:
    """The angle in degrees between the update ``rule`` makes on the batch (x, y) and
    backprop's, −∇θ of the network's task loss at the same parameters (seed 002 Fig. 1a).

    ``measure`` says what the rule's update is:

    - "gradient" (default): minus the sum of the ``.grad`` each of the rule's optimiser
      steps reads, the direction plain SGD would move; the angle of Fig. 1a, free of
      Adam's per-coordinate rescaling, momentum and weight decay (which optimisers
      apply inside ``step``). With one plain-SGD step per parameter it equals
      "step"'s angle up to rounding. Changes a rule makes outside an optimiser are
      not seen.
    - "step": the actual parameter change θ_after − θ_before, optimiser included
      (differenced in the parameters' precision, so a small step rounds a little).

    ``per`` gives one angle per parameter tensor (keys as ``model.named_parameters()``),
    per module (its parameters as one vector, e.g. ``blocks.0.layer``) or for the whole
    network (key ``network``). Only the network's parameters are compared: a rule's heads
    and feedback weights have no backprop counterpart. A key maps to None when there is
    nothing to compare: the rule left those parameters alone (no gradient reached an
    optimiser step, or with "step", no change) or backprop's gradient is zero there.

    The rule's step runs on a deep copy of the rule, and backprop's gradient on a copy
    of the network (in training mode, under the rule's autocast, from the same random
    state, so dropout masks match); ``rule`` and the random generators are untouched.
    """
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a locallearn Rule, got {type(rule).__name__}")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if per not in GROUPINGS:
        raise ValueError(f"per must be one of {', '.join(GROUPINGS)}, got {per!r}")
    names = [name for name, parameter in rule.model.named_parameters() if parameter.requires_grad]
    with torch.random.fork_rng(devices=_cuda_devices(rule)):
        random_state = _random_state(rule)
        rule_updates = _rule_updates(rule, x, y, measure)
        _set_random_state(rule, random_state)
        backprop_updates = _backprop_updates(rule, x, y)
    groups = _group(names, per)
    return {group: _angle([rule_updates.get(name) for name in members],
                          [backprop_updates.get(name) for name in members])
            for group, members in groups.items()}


def angle_between(a: Tensor, b: Tensor) -> float:
    """The angle in degrees between two tensors seen as vectors, 2·atan2(‖â − b̂‖, ‖â + b̂‖)
    in float64 (exact near 0° and 180°, where acos of the cosine is not)."""
    for name, tensor in (("a", a), ("b", b)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"the tensors differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("the angle of tensors holding NaN or infinite values is undefined")
    norm_a, norm_b = a.norm(), b.norm()
    if norm_a == 0 or norm_b == 0:
        raise ValueError("the angle with a zero vector is undefined")
    a, b = a / norm_a, b / norm_b
    return math.degrees(2 * math.atan2((a - b).norm().item(), (a + b).norm().item()))


def total_discrepancy(metrics: Mapping[str, Tensor | float], *, include_output: bool = True) -> float:
    """Seed 002's total discrepancy D (§2, Fig. 1b): the sum of the layers' local losses in
    a ``train_step`` result or a metrics.jsonl record (``loss/block<k>`` or AL's
    ``loss/forward<k>`` and, with ``include_output``, ``loss/output``, the output layer's
    own loss; see :data:`LOCAL_LOSS_KEY`)."""
    keys = [key for key in metrics if LOCAL_LOSS_KEY.fullmatch(key)
            and (include_output or key != "loss/output")]
    if not keys:
        raise ValueError(f"the metrics hold no local losses (loss/block<k>, loss/forward<k> or loss/output); "
                         f"their keys are: {', '.join(metrics) or 'none'}")
    return sum(float(metrics[key]) for key in keys)


def discrepancy_history(run_dir: str | Path, *, kind: str = "step",
                        include_output: bool = True) -> list[tuple[int, float]]:
    """(step, total discrepancy) for every ``kind`` record ("step" or "epoch") of a run
    directory's metrics.jsonl, in the order logged."""
    if kind not in ("step", "epoch"):
        raise ValueError(f"kind must be 'step' or 'epoch', got {kind!r}")
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no metrics.jsonl: is it a run directory of `locallearn train`?")
    records = [record for record in read_metrics(run_dir) if record.get("kind") == kind]
    if not records:
        raise ValueError(f"{path} has no {kind!r} records")
    return [(record["step"], total_discrepancy(record, include_output=include_output)) for record in records]


def _rule_updates(rule: Rule, x: Tensor, y: Tensor, measure: str) -> dict[str, Tensor]:
    """One train_step of a copy of ``rule``: minus the summed gradients its optimisers
    stepped with, or its parameters' change, by parameter name."""
    probe = copy.deepcopy(rule)
    parameters = dict(probe.model.named_parameters())
    if measure == "step":
        before = {name: parameter.detach().clone() for name, parameter in parameters.items()}
        probe.train_step(x, y)
        changes = {name: parameters[name].detach() - before[name] for name in parameters}
        return {name: change for name, change in changes.items() if change.any()}
    names = {parameter: name for name, parameter in parameters.items()}
    gradients: dict[str, Tensor] = {}
    with _recording_gradients(names, gradients):
        probe.train_step(x, y)
    return {name: -gradient for name, gradient in gradients.items()}


@contextmanager
def _recording_gradients(names: dict[nn.Parameter, str], gradients: dict[str, Tensor]) -> Iterator[None]:
    """While active, every optimiser step adds the ``.grad`` of the parameters in
    ``names`` to ``gradients`` (by name) before it updates them."""

    def record(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                name = names.get(parameter)
                if name is not None and parameter.grad is not None:
                    gradient = parameter.grad.detach().double()
                    gradients[name] = gradients[name] + gradient if name in gradients else gradient.clone()

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield
    finally:
        handle.remove()


def _backprop_updates(rule: Rule, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """−∇θ of the task loss on a copy of the network whose feedback-alignment layers
    back-propagate through their weights, by parameter name."""
    model = copy.deepcopy(rule.model)
    for module in model.modules():
        forward = _EXACT_FORWARD.get(type(module))
        if forward is not None:
            module.forward = forward.__get__(module)
    model.train()
    model.zero_grad(set_to_none=True)
    with rule.autocast():
        output = model(x)
        loss = model.task.loss(output, x, y)
    loss.backward()
    return {name: -parameter.grad.detach().double() for name, parameter in model.named_parameters()
            if parameter.grad is not None and parameter.grad.any()}


def _group(names: list[str], per: str) -> dict[str, list[str]]:
    if per == "network":
        return {"network": names}
    if per == "parameter":
        return {name: [name] for name in names}
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    return groups


def _angle(rule_updates: list[Tensor | None], backprop_updates: list[Tensor | None]) -> float | None:
    """The angle between the concatenated updates of the parameters both touch, or None."""
    pairs = [(a, b) for a, b in zip(rule_updates, backprop_updates) if a is not None and b is not None]
    if not pairs:
        return None
    return angle_between(torch.cat([a.flatten() for a, _ in pairs]), torch.cat([b.flatten() for _, b in pairs]))


def _cuda_devices(rule: Rule) -> list[torch.device]:
    return [rule.device] if rule.device.type == "cuda" else []


def _random_state(rule: Rule) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(rule.device) if rule.device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_random_state(rule: Rule, state: tuple[Tensor, Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], rule.device)
