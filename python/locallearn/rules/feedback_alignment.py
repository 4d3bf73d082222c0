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
        features = []
        h_in = x
        for block in self.model.blocks:
            with self.autocast():
                h = block.features(h_in)
            features.append(h)
            with torch.no_grad(), self.autocast():
                h_in = block.emit(h.detach())
        with self.autocast():
            logits = at_least_float32(self.model.output(h_in))
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        # e = ∂L/∂logits of the mean cross-entropy, in closed form; one backward from every
        # root: under torch.compile the blocks and the output layer may share one graph.
        error = (logits.detach().softmax(1) - F.one_hot(y, logits.shape[1])) / len(y)
        torch.autograd.backward([loss, *features],
                                [None, *(self.feedback(error, layer).view_as(h).to(h.dtype)
                                         for layer, h in enumerate(features))])
        self.optimizer.step()
        loss = loss.detach()
        return {"loss": loss, "loss/output": loss, "train_error": self.model.task.error(logits, x, y)}


RULES = {"fa": FeedbackAlignment, "dfa": DirectFeedbackAlignment}
