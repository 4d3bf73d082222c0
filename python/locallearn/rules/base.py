"""The learning-rule interface (shared/DESIGN.md, "A learning rule").

A rule owns its network, its optimisers and its update. The trainer calls
``train_step`` and never a global ``backward`` itself.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from locallearn.models import Network
from locallearn.models.network import LinearOutput
from locallearn.rules.optimizers import OPTIMIZERS

FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")
"""Devices on which :meth:`Rule.make_optimizer` asks torch for a fused optimiser step."""
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes, for :meth:`Rule.compile`."""


class Rule(ABC):
    """Base class: prediction, per-block activations and checkpoint state for a
    :class:`Network`. ``train_step`` returns 0-d detached tensors (losses named
    ``loss/<layer>``, the total ``loss`` and the batch's ``train_error``) so that
    the caller decides when to synchronise with the device."""

    name: str = ""
    tasks: tuple[str, ...] = ("classification",)
    """The tasks (``Network.task.name``) the rule can train; see :mod:`locallearn.models.tasks`."""

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False) -> None:
        if model.task.name not in self.tasks:
            raise ValueError(f"rule {self.name!r} trains {' and '.join(self.tasks)} networks; {model.name} is a "
                             f"{model.task.name} network")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        self.model = model
        self.lr, self.optimizer_name, self.weight_decay, self.amp = lr, optimizer, weight_decay, amp

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self) -> AbstractContextManager:
        """bfloat16 autocast when the rule was built with ``amp=True``, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def make_optimizer(self, parameters, lr: float | None = None) -> torch.optim.Optimizer:
        """The rule's optimiser (Adam by default, as in seed 004 §4 and seed 000 §III;
        SGD and RMSprop for seed 002's and seed 003's recipes) over ``parameters``,
        at ``lr`` or the rule's rate; torch's fused implementation on the CPU and the GPU
        where the optimiser has one (Adam and SGD: one kernel over all the parameters instead
        of a loop over them)."""
        optimizer_class = OPTIMIZERS[self.optimizer_name]
        fused = (self.device.type in FUSED_OPTIMIZER_DEVICES
                 and "fused" in inspect.signature(optimizer_class).parameters)
        return optimizer_class(list(parameters), lr=lr or self.lr, weight_decay=self.weight_decay,
                               **({"fused": True} if fused else {}))

    def begin_epoch(self, epoch: int) -> None:
        """Called by the trainer before every epoch (0-based); rules with a schedule
        of their own (DTP's alternating phases) override it."""

    needs_epoch_pass = False
    """True for rules that train something once per epoch on a separate pass over
    the training data (DDTP's feedback mappings); the trainer then calls :meth:`end_epoch`."""

    def end_epoch(self, batches: Iterator[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """With ``needs_epoch_pass``: one more pass over the training batches after each epoch."""
        return {}

    @abstractmethod
    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One full update on a batch."""

    def use_channels_last(self) -> None:
        """Hold every 4-d parameter and buffer in channels-last (NHWC) memory format: a
        convolution follows its weight's format, so conv layers, batch norm and the local
        heads then run on NHWC activations. Call before the first step."""
        self.trainable_modules().to(memory_format=torch.channels_last)

    def compile(self, mode: str | None = None) -> None:
        """Run every later ``train_step`` through ``torch.compile`` (static shapes: the last
        short batch of an epoch gets a graph of its own). Dynamo traces the whole step, so
        each block's forward, head and local loss become one graph, the backward that
        AOTAutograd derives from it a second, and the optimiser steps their own; the
        graphs break only at ``backward`` and ``zero_grad``. ``mode`` is torch.compile's:
        None picks ``"reduce-overhead"`` (CUDA graphs) on a GPU and the default on a CPU."""
        if mode is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown torch.compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        self.train_step = torch.compile(self.train_step, mode=mode, dynamic=False)

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser the rule steps, for learning-rate schedules."""

    def trainable_modules(self) -> nn.Module:
        """All modules whose state a checkpoint must hold (the network and any heads)."""
        return self.model

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Logits in evaluation mode."""
        self.model.eval()
        with self.autocast():
            return self.model(x).float()

    @torch.no_grad()
    def activations(self, x: Tensor) -> list[Tensor]:
        """The output of every hidden block, then the logits, in evaluation mode."""
        self.model.eval()
        outputs = []
        with self.autocast():
            for block in self.model.blocks:
                x = block(x)
                outputs.append(x.float())
            outputs.append(self.model.output(x).float())
        return outputs

    def state_dict(self) -> dict:
        return {
            "rule": self.name,
            "modules": self.trainable_modules().state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers()],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; a state of another rule or network is refused
        before anything is changed."""
        if state.get("rule") != self.name:
            raise ValueError(f"the state is of rule {state.get('rule')!r}, not {self.name!r}")
        modules = self.trainable_modules()
        expected, given = modules.state_dict(), state["modules"]
        problems = [f"missing {key}" for key in expected.keys() - given.keys()]
        problems += [f"unexpected {key}" for key in given.keys() - expected.keys()]
        problems += [f"{key} has shape {tuple(given[key].shape)}, expected {tuple(expected[key].shape)}"
                     for key in expected.keys() & given.keys() if given[key].shape != expected[key].shape]
        optimizers = self.optimizers()
        if len(state["optimizers"]) != len(optimizers):
            problems.append(f"{len(state['optimizers'])} optimisers, expected {len(optimizers)}")
        if problems:
            raise ValueError(f"the state does not fit this {self.name!r} rule on {self.model.name} "
                             f"(different model or settings): {'; '.join(sorted(problems)[:5])}")
        modules.load_state_dict(given)
        for optimizer, optimizer_state in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(optimizer_state)


def require_plain_mlp(model: Network, rule: str, definition: str) -> None:
    """Refuse, before any work, a network a fully-connected rule cannot train: no hidden
    blocks, convolutional or locally-connected blocks, batch norm or dropout.
    ``definition`` names where the paper defines the rule's plain layers."""
    if not model.blocks:
        raise ValueError(f"{rule} trains hidden layers and {model.name} has none")
    if any(block.kind != "linear" for block in model.blocks) or not isinstance(model.output, LinearOutput):
        raise ValueError(f"{rule} is defined here for fully-connected layers ({definition}); {model.name} has "
                         f"convolutional or locally-connected layers: use an mlp")
    if any(not isinstance(block.norm, nn.Identity) or not isinstance(block.dropout, nn.Identity)
           for block in model.blocks):
        raise ValueError(f"{rule}'s layers are plain ({definition}), without batch norm or dropout; "
                         f"build {model.name} with batch_norm=False and dropout=0")
