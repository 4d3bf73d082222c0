"""Feedback alignment (fa) and direct feedback alignment (dfa), seed 003 §2.1.1 and
seed 002 §2.

- fa (Lillicrap et al. 2016): the network learns end to end from the output
  cross-entropy, but every linear and conv layer, the output layer included, sends
  the error to its input through a fixed random matrix B of its weight's shape
  instead of W (:func:`~locallearn.nn.convert_to_feedback_alignment`).
- dfa (Nøkland 2016): the graph is detached between blocks; the output layer learns
  from the cross-entropy as usual and its error e = ∂L/∂logits (batch × K) reaches
  every hidden block's features h_ℓ (after the nonlinearity) as e B_ℓ, B_ℓ a fixed
  random K × N_ℓ matrix. Back-propagating e B_ℓ through the block's own
  nonlinearity and batch norm gives δa_ℓ = (e B_ℓ) ⊙ f'(a_ℓ); no error crosses a block.
  B_ℓ is generated on the fly by default (:class:`~locallearn.nn.DirectFeedback`), so
  conv features of any size fit (seed 003 §3.3 could not hold them on ImageNet).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.models import Network
from locallearn.nn import DirectFeedback, convert_to_feedback_alignment
from locallearn.rules.backprop import Backprop
from locallearn.models.tasks import at_least_float32
from locallearn.rules.base import Rule


class FeedbackAlignment(Backprop):
    """Backprop's loop over a network whose layers feed the error back through fixed
    random matrices, drawn from ``seed`` like the weights (the run's ``init`` scheme;
    the model is converted in place)."""

    name = "fa"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, init: str = "default", init_std: float = 0.05) -> None:
        convert_to_feedback_alignment(model, seed, init, init_std)
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)


class DirectFeedbackAlignment(Rule):
    """Every hidden block learns from the output error projected straight to its
    features; ``dfa_feedback`` is "generated" (B_ℓ generated where the fused op
    multiplies it, never held; ``dfa_chunk`` columns at a time in its pure-PyTorch
    fallback) or "stored" (B_ℓ held, O(K·N_ℓ)), whose steps agree to float32 rounding.
    The default is "generated": for small features both are cheap, for large ones only
    it fits."""

    name = "dfa"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, dfa_feedback: str = "generated", dfa_chunk: int = 16384) -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        if not model.blocks:
            raise ValueError(f"rule 'dfa' trains hidden blocks and {model.name} has none")
        sizes = [torch.Size(shape).numel() for shape in model.block_shapes]
        self.feedback = DirectFeedback(model.num_classes, sizes, seed, dfa_feedback, dfa_chunk, device=self.device)
        self.optimizer = self.make_optimizer(model.parameters())

    def trainable_modules(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, "feedback": self.feedback})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        blocks = range(len(self.model.blocks))
        features, h = self.forward_blocks(x, blocks)
        with self.autocast():
            logits = at_least_float32(self.model.output(h))
        loss = F.cross_entropy(logits, y)
        # one backward from every root: under torch.compile the blocks and the output layer may share one graph
        self.learn(blocks, features, self.output_error(logits, y), loss)
        loss = loss.detach()
        return {"loss": loss, "loss/output": loss, "train_error": self.model.task.error(logits, x, y)}

    def forward_blocks(self, h_in: Tensor, blocks: range) -> tuple[list[Tensor], Tensor]:
        """The features of ``blocks`` (consecutive), each block's input detached, and what the
        last one emits."""
        features = []
        for index in blocks:
            block = self.model.blocks[index]
            with self.autocast():
                h = block.features(h_in)
            features.append(h)
            with torch.no_grad(), self.autocast():
                h_in = block.emit(h.detach())
        return features, h_in

    @staticmethod
    def output_error(logits: Tensor, y: Tensor) -> Tensor:
        """e = ∂L/∂logits of the mean cross-entropy, in closed form."""
        return (logits.detach().softmax(1) - F.one_hot(y, logits.shape[1])) / len(y)

    def learn(self, blocks: range, features: list[Tensor], error: Tensor, loss: Tensor | None = None) -> None:
        """Step ``blocks`` from the output error projected onto their ``features`` (e B_ℓ), and
        the output layer from ``loss`` when given; only those parameters get gradients, so the
        one optimiser steps only them."""
        self.optimizer.zero_grad(set_to_none=True)
        roots = [*([loss] if loss is not None else []), *features]
        gradients = [*([None] if loss is not None else []),
                     *(self.feedback(error, index).view_as(h).to(h.dtype) for index, h in zip(blocks, features))]
        torch.autograd.backward(roots, gradients)
        self.optimizer.step()

    # ------------------------------------------------------------------ layer-parallel stages
    # (locallearn.engine.pipeline): a unit is a hidden block; the output error travels back

    stage_unit = "block"

    def stage_units(self) -> list[list[nn.Module]]:
        return [[block] for block in self.model.blocks]

    def stage_output_modules(self) -> list[nn.Module]:
        return [self.model.output]

    def stage_metric_names(self) -> list[str]:
        return ["loss", "loss/output", "train_error"]

    def train_stage(self, inputs: tuple[Tensor], y: Tensor, blocks: range,
                    metrics: dict[str, Tensor]) -> tuple[tuple[Tensor], tuple[range, list[Tensor]]]:
        """The forward of ``blocks``; what :meth:`learn_from_error` needs once the output error arrives."""
        features, h = self.forward_blocks(inputs[0], blocks)
        return (h,), (blocks, features)

    def learn_from_error(self, pending: tuple[range, list[Tensor]], error: Tensor) -> None:
        self.learn(*pending, error)

    def train_last_stage(self, inputs: tuple[Tensor], y: Tensor, blocks: range, metrics: dict[str, Tensor],
                         send_error=None) -> dict[str, Tensor]:
        features, h = self.forward_blocks(inputs[0], blocks)
        with self.autocast():
            logits = at_least_float32(self.model.output(h))
        loss = F.cross_entropy(logits, y)
        error = self.output_error(logits, y)
        if send_error is not None:
            send_error(error)
        self.learn(blocks, features, error, loss)
        loss = loss.detach()
        return {"loss": loss, "loss/output": loss, "train_error": self.model.task.error(logits, None, y)}


RULES = {"fa": FeedbackAlignment, "dfa": DirectFeedbackAlignment}
