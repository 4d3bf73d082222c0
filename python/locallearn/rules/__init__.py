"""Learning rules: each trains a :class:`~locallearn.models.Network` its own way.

``build_rule(name, model, lr=..., **options)`` builds any of ``RULE_NAMES``. Each
family module lists its rules in a ``RULES`` dict of name → constructor; the
options a rule takes are its constructor's keyword arguments.
"""

from __future__ import annotations

import inspect

from locallearn.models import Network
from locallearn.rules import associated, backprop, ddtp, equilibrium, feedback_alignment, local_losses, lra, target_prop
from locallearn.rules.backprop import Backprop
from locallearn.rules.base import COMPILE_MODES, OPTIMIZERS, Rule
from locallearn.rules.local_losses import LocalLosses

REGISTRY = {**backprop.RULES, **local_losses.RULES, **feedback_alignment.RULES, **target_prop.RULES, **ddtp.RULES,
            **lra.RULES, **associated.RULES, **equilibrium.RULES}
RULE_NAMES = tuple(REGISTRY)


def build_rule(name: str, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
               amp: bool = False, seed: int = 0, init: str = "default", init_std: float = 0.05,
               **options) -> Rule:
    """One of ``RULE_NAMES`` on ``model`` (already on its device). ``options`` are the
    rule's own settings (e.g. ``beta`` for predsim); one the rule does not take is an
    error that lists those it does. ``seed`` and the run's weight ``init`` scheme reach the
    rules that draw random matrices of their own (feedback alignment's B, drawn like the weights)."""
    accepted = rule_options(name)  # refuses an unknown name
    constructor = REGISTRY[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        raise ValueError(f"rule {name!r} has no option {', '.join(unknown)}; {takes}")
    parameters = inspect.signature(constructor).parameters
    shared = {"seed": seed, "init": init, "init_std": init_std}
    options.update({key: value for key, value in shared.items() if key in parameters})
    return constructor(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp, **options)


def check_rule_name(name: str) -> None:
    """ValueError, listing ``RULE_NAMES``, unless ``name`` is one of them."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown rule {name!r}; choose one of {', '.join(RULE_NAMES)}")


def rule_options(name: str) -> list[str]:
    """The rule-specific keyword options of rule ``name``."""
    check_rule_name(name)
    common = {"model", "lr", "optimizer", "weight_decay", "amp", "seed", "init", "init_std", "name"}
    parameters = inspect.signature(REGISTRY[name]).parameters
    return [option for option in parameters if option not in common]


def default_activation(rule: str) -> str:
    """The nonlinearity of the rule's paper: seed 004 §4 uses ReLU for the glob and pred
    losses and leaky ReLU for sim and predsim; seeds 002 and 003 use tanh, seed 001 ELU."""
    check_rule_name(rule)
    if rule in TANH_RULES:
        return "tanh"
    if rule == "al":
        return "elu"
    return "leaky_relu" if "sim" in rule else "relu"


def default_batch_norm(rule: str) -> bool:
    """Whether hidden blocks get batch norm unless told otherwise: seed 004's recipe
    has it; the target-propagation, representation-alignment, associated-learning and
    equilibrium-propagation rules are defined for plain layers and refuse it."""
    check_rule_name(rule)
    return rule not in PLAIN_LAYER_RULES


def default_batch_size(rule: str) -> int:
    """Examples per step unless told otherwise: seed 004's 128; seed 001 §3 trains AL at 32,
    and at 128 its sigmoid target autoencoders are still on their initial plateau (h₁
    predicting the class prior) after the 90 steps of ten epochs on digits."""
    check_rule_name(rule)
    return 32 if rule == "al" else 128


def default_depth(rule: str) -> int:
    """MLP hidden layers unless told otherwise: seed 004's 3; for eqprop the one hidden layer of
    Scellier & Bengio's first network (§5), whose settling takes 20 steps where their
    3-hidden-layer one takes 500 and 500 epochs."""
    check_rule_name(rule)
    return 1 if rule == "eqprop" else 3


TANH_RULES = ("lra-e", "dtp", "dtp-sigma", "sdtp", "ao-sdtp")
PLAIN_LAYER_RULES = ("lra-e", "ddtp", "dtp", "dtp-sigma", "sdtp", "ao-sdtp", "al", "eqprop")


__all__ = ["COMPILE_MODES", "OPTIMIZERS", "REGISTRY", "RULE_NAMES", "Backprop", "LocalLosses", "Rule", "build_rule",
           "default_activation", "default_batch_norm", "default_batch_size", "default_depth", "rule_options"]
