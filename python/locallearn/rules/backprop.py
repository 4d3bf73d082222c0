"""Global back-propagation of the output loss (the cross-entropy, or an autoencoder's
reconstruction error): the baseline (seed 004's "glob" loss) every table compares the
local rules against."""

from __future__ import annotations

import torch
from torch import Tensor

from locallearn.models import Network
from locallearn.rules.base import Rule


class Backprop(Rule):
    """One optimiser over the whole network, the task's loss at the output."""

    name = "backprop"
    tasks = ("classification", "reconstruction")

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False) -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        self.optimizer = self.make_optimizer(model.parameters())

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        with self.autocast():
            logits = self.model(x)
            loss = self.model.task.loss(logits, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        return {"loss": loss, "loss/output": loss, "train_error": self.model.task.error(logits, x, y)}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]


RULES = {"backprop": Backprop}
