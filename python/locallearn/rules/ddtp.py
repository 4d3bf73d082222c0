"""Direct difference target propagation, DDTP (seed 000 §IV-B, eqs. (7)–(14)).

The forward pass hᵢ = fᵢ(hᵢ₋₁) (eq. (7)) ends in the logits h_L. The output target
is a gradient step on the output cross-entropy, ĥ_L = h_L − η̂ ∂ℒ(h_L, y)/∂h_L
(eq. (8)); direct linear feedback mappings gᵢ from the output to every hidden layer
carry it down with the difference correction ĥᵢ = gᵢ(ĥ_L) + hᵢ − gᵢ(h_L) (eq. (9)),
so that ĥᵢ = hᵢ whenever ĥ_L = h_L. Every layer, the output layer included (its target
is ĥ_L, so it descends 2η̂ times the cross-entropy's gradient), descends its own
(1/B) Σ_b ‖ĥᵢ − hᵢ‖² (eq. (10)) with the graph detached between layers.

The gᵢ learn to reconstruct noise: hᵢ is corrupted, h̃ᵢ = hᵢ + σε (eq. (11)), passed
through the layers above (eq. (12)), mapped back, hᵢʳᵉᶜ = gᵢ(h̃_L) + hᵢ − gᵢ(h_L)
(eq. (13)), and gᵢ descends (1/B) Σ_b ‖hᵢʳᵉᶜ − h̃ᵢ‖² (eq. (14)). As in §V-C this runs
once per epoch on a separate pass over the training data at its own rate (0.005), or,
with ``feedback_schedule="step"``, on every training batch before the forward update.

The gᵢ are bias-free (eqs. (9) and (13) subtract any bias), drawn from ``seed``; a conv
block's features (C, H, W) are reached by a linear map to C·H·W values, reshaped. The
noise ε comes from torch's global generator, like dropout's masks. The paper gives no
η̂ or σ; the defaults 0.1 and 0.1 are ours.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.models import Network
from locallearn.models.tasks import at_least_float32
from locallearn.rules.base import Rule

FEEDBACK_SCHEDULES = ("epoch", "step")


class OutputFeedbackMapping(nn.Module):
    """gᵢ: a bias-free linear map from the output (num_classes values) to a block's features."""

    def __init__(self, num_classes: int, feature_shape: tuple[int, ...], generator: torch.Generator) -> None:
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        bound = 1 / math.sqrt(num_classes)  # nn.Linear's default range
        self.weight = nn.Parameter(torch.empty(math.prod(feature_shape), num_classes).uniform_(
            -bound, bound, generator=generator))

    def forward(self, output: Tensor) -> Tensor:
        return F.linear(output, self.weight).reshape(-1, *self.feature_shape)


class DirectDifferenceTargetProp(Rule):
    """DDTP with linear direct feedback (see the module docstring)."""

    name = "ddtp"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, target_step: float = 0.1, feedback_lr: float = 0.005,
                 feedback_noise: float = 0.1, feedback_schedule: str = "epoch") -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        if target_step <= 0:
            raise ValueError(f"target_step (η̂ of eq. (8)) must be positive, got {target_step}")
        if feedback_lr <= 0:
            raise ValueError(f"feedback_lr must be positive (seed 000 §V-C uses 0.005), got {feedback_lr}")
        if feedback_noise <= 0:
            raise ValueError(f"feedback_noise (σ of eq. (11)) must be positive, got {feedback_noise}")
        if feedback_schedule not in FEEDBACK_SCHEDULES:
            raise ValueError(f"unknown feedback_schedule {feedback_schedule!r}; choose one of "
                             f"{', '.join(FEEDBACK_SCHEDULES)}")
        if not model.blocks:
            raise ValueError(f"DDTP trains hidden layers from feedback mappings and {model.name} has none")
        if any(not isinstance(block.norm, nn.Identity) or not isinstance(block.dropout, nn.Identity)
               for block in model.blocks):
            raise ValueError(f"DDTP's layers are fᵢ = nonlinearity ∘ layer (seed 000 eq. (7), dropout removed, "
                             f"§V-A): build {model.name} with batch_norm=False and dropout=0")
        self.target_step, self.feedback_noise, self.feedback_schedule = target_step, feedback_noise, feedback_schedule
        self.needs_epoch_pass = feedback_schedule == "epoch"
        generator = torch.Generator().manual_seed(seed)
        self.feedback = nn.ModuleList(OutputFeedbackMapping(model.num_classes, shape, generator)
                                      for shape in model.block_shapes)
        self.feedback.to(device=self.device, dtype=next(model.parameters()).dtype)
        self.optimizer = self.make_optimizer(model.parameters())
        self.feedback_optimizer = self.make_optimizer(self.feedback.parameters(), lr=feedback_lr)

    def trainable_modules(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, "feedback": self.feedback})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The forward weights' optimiser; the feedback optimiser keeps its own fixed rate
        (§V-C) out of the learning-rate schedule, and is saved by :meth:`state_dict`."""
        return [self.optimizer]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "feedback_optimizer": self.feedback_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("rule") == self.name and "feedback_optimizer" not in state:
            raise ValueError("the DDTP state has no feedback_optimizer entry")
        super().load_state_dict(state)
        self.feedback_optimizer.load_state_dict(state["feedback_optimizer"])

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        metrics: dict[str, Tensor] = {}
        if self.feedback_schedule == "step":
            metrics.update(self._named_feedback_losses(self.train_feedback(x)))
        with self.autocast():
            features, logits = self._forward(x)
        features, logits = [at_least_float32(h) for h in features], at_least_float32(logits)
        with torch.no_grad():
            output_target = self.output_target(logits, y)
            targets = self.layer_targets(features, logits, output_target)
        losses = [_squared_distance(h, target) for h, target in zip(features, targets)]  # eq. (10)
        output_loss = _squared_distance(logits, output_target)  # eq. (10) for the last layer
        self.optimizer.zero_grad(set_to_none=True)
        (sum(losses) + output_loss).backward()  # each loss reaches its own layer only
        self.optimizer.step()
        cross_entropy = F.cross_entropy(logits.detach(), y)
        metrics.update({f"loss/block{index}": loss.detach() for index, loss in enumerate(losses)})
        return {"loss": cross_entropy, "loss/output": cross_entropy, **metrics,
                "train_error": self.model.task.error(logits, x, y)}

    def output_target(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Eq. (8): ĥ_L = h_L − η̂ ∂ℒ/∂h_L, the gradient of each example's own
        cross-entropy, softmax(h_L) − onehot(y), so η̂ does not depend on the batch size."""
        gradient = logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return logits - self.target_step * gradient

    def layer_targets(self, features: list[Tensor], logits: Tensor, output_target: Tensor) -> list[Tensor]:
        """Eq. (9): ĥᵢ = gᵢ(ĥ_L) + hᵢ − gᵢ(h_L) for every hidden layer."""
        return [g(output_target) + h - g(logits) for g, h in zip(self.feedback, features)]

    def reconstruction_losses(self, x: Tensor) -> list[Tensor]:
        """Eqs. (11)–(14) for every hidden layer on the batch ``x``, each differentiable in
        its own gᵢ only (the forward passes run without a graph)."""
        with torch.no_grad(), self.autocast():
            features, logits = self._forward(x)
        logits = at_least_float32(logits)
        losses = []
        for index, (g, h) in enumerate(zip(self.feedback, features)):
            h = at_least_float32(h)
            corrupted = h + self.feedback_noise * torch.randn_like(h)  # eq. (11)
            with torch.no_grad(), self.autocast():
                corrupted_output = at_least_float32(self._forward_from(index, corrupted))  # eq. (12)
            reconstruction = g(corrupted_output) + h - g(logits)  # eq. (13)
            losses.append(_squared_distance(reconstruction, corrupted))  # eq. (14)
        return losses

    def train_feedback(self, x: Tensor) -> list[Tensor]:
        """One step of every gᵢ on its reconstruction loss; returns the losses (detached)."""
        losses = self.reconstruction_losses(x)
        self.feedback_optimizer.zero_grad(set_to_none=True)
        sum(losses).backward()
        self.feedback_optimizer.step()
        return [loss.detach() for loss in losses]

    def end_epoch(self, batches: Iterator[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """§V-C: "the feedback layers were trained after each epoch", one pass over ``batches``;
        returns the mean reconstruction loss of each layer."""
        totals: list[Tensor] = []
        count = 0
        for x, _ in batches:
            losses = self.train_feedback(x)
            totals = losses if not totals else [total + loss for total, loss in zip(totals, losses)]
            count += 1
        return self._named_feedback_losses([total / count for total in totals]) if count else {}

    def _forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every block's features, each computed from the previous block's detached output
        (eq. (7)), and the logits computed from the last one detached."""
        features = []
        h_in = x
        for block in self.model.blocks:
            h = block.features(h_in.detach())
            features.append(h)
            h_in = block.emit(h)
        return features, self.model.output(h_in.detach())

    def _forward_from(self, index: int, h: Tensor) -> Tensor:
        """The logits when block ``index``'s features are ``h`` (eq. (12))."""
        h_in = self.model.blocks[index].emit(h)
        for block in self.model.blocks[index + 1:]:
            h_in = block(h_in)
        return self.model.output(h_in)

    @staticmethod
    def _named_feedback_losses(losses: list[Tensor]) -> dict[str, Tensor]:
        return {f"loss/feedback{index}": loss for index, loss in enumerate(losses)}


def _squared_distance(h: Tensor, target: Tensor) -> Tensor:
    """(1/B) Σ_b ‖target_b − h_b‖², eqs. (10) and (14)."""
    return (target - h).pow(2).flatten(1).sum(dim=1).mean()


RULES = {"ddtp": DirectDifferenceTargetProp}
