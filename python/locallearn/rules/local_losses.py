"""The local-loss rules of seed 004 (Nøkland & Eidnes 2019): pred, sim, predsim and
their -bio variants.

Every hidden block is trained by its own Adam optimiser from its own loss and the
graph is detached between blocks (§4), so no error crosses a block boundary:

- sim (eq. (4)): ‖S(NeuralNet(H)) − S(Y)‖² with NeuralNet a 3×3 conv (+ per-channel
  std over space) or a linear layer, computed by the fused similarity-matching op;
- pred (eq. (6)): cross-entropy of a local linear classifier on average-pooled H;
- predsim (eq. (7)): (1 − β)·pred + β·sim, β = 0.99;
- -bio (§3.3, eq. (8)): Y is replaced by a fixed random projection of the one-hot
  target (128 values); pred-bio predicts its binarisation with binary cross-entropy
  through a feedback-alignment classifier, sim-bio compares S of average-pooled H
  (no learned head) with S of the projection; β = 0.01 for predsim-bio.

The output layer learns from the output cross-entropy, scaled by (1 − β) for the
predsim variants as in the paper's code.

Initialisation follows the authors' code (anokland/local-loss, train.py at 7b3b40b):
the pred heads' W start at zero (:class:`~locallearn.nn.PredictionHead`), and so does
the output layer's weight whenever local losses train the network (l. 1241,
``Net.layer_out``, which is also the VGGs' classifier, l. 1307; l. 1014 and 1158 for
its ResNets); its bias keeps its initialisation. Backprop's output layer is not zeroed.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.models import Network
from locallearn.nn import PredictionHead, SimilarityHead
from locallearn.ops import similarity_matching_loss, similarity_matrix
from locallearn.rules.base import Rule

DEFAULT_BETA = {"predsim": 0.99, "predsim-bio": 0.01}
LOCAL_LOSS_NAMES = ("pred", "sim", "predsim", "pred-bio", "sim-bio", "predsim-bio")


class TargetProjection(nn.Module):
    """The fixed random transformation of the one-hot target used by the -bio losses."""

    def __init__(self, num_classes: int, size: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", torch.randn(num_classes, size, generator=generator))

    def forward(self, labels: Tensor) -> Tensor:
        return self.matrix[labels]  # one_hot(labels) @ matrix


class LocalLosses(Rule):
    """Block-wise training with seed 004's local losses (see the module docstring)."""

    def __init__(self, model: Network, name: str = "predsim", *, lr: float, beta: float | None = None,
                 dim_in_decoder: int = 2048, target_proj_size: int = 128, seed: int = 0, optimizer: str = "adam",
                 weight_decay: float = 0.0, amp: bool = False) -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        if name not in LOCAL_LOSS_NAMES:
            raise ValueError(f"unknown local loss {name!r}; choose one of {', '.join(LOCAL_LOSS_NAMES)}")
        if beta is not None and name not in DEFAULT_BETA:
            raise ValueError(f"beta weighs pred against sim; rule {name!r} has only one of them")
        self.beta = DEFAULT_BETA.get(name, 1.0 if name.startswith("sim") else 0.0) if beta is None else beta
        if not 0 <= self.beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if dim_in_decoder < 1 or target_proj_size < 1:
            raise ValueError(f"dim_in_decoder and target_proj_size must be positive, "
                             f"got {dim_in_decoder} and {target_proj_size}")
        if not model.blocks:
            raise ValueError(f"rule {name!r} trains hidden blocks and {model.name} has none")
        self.name = name
        self.bio = name.endswith("-bio")
        with torch.no_grad():
            model.output.layer.weight.zero_()  # see the module docstring
        self.uses_pred, self.uses_sim = self.beta < 1, self.beta > 0
        num_classes = model.num_classes
        self.target_projection = TargetProjection(num_classes, target_proj_size, seed) if self.bio else None
        pred_outputs = target_proj_size if self.bio else num_classes
        self.heads = nn.ModuleList()
        for shape in model.block_shapes:
            heads = nn.ModuleDict()
            if self.uses_pred:
                heads["pred"] = PredictionHead(shape, pred_outputs, dim_in_decoder, feedback_alignment=self.bio)
            if self.uses_sim:
                heads["sim"] = SimilarityHead(shape, learned=not self.bio, dim_in_decoder=dim_in_decoder)
            self.heads.append(heads)
        self.heads.to(self.device)
        if self.target_projection is not None:
            self.target_projection.to(self.device)
        self.block_optimizers = [self.make_optimizer([*block.parameters(), *heads.parameters()])
                                 for block, heads in zip(model.blocks, self.heads)]
        self.output_optimizer = self.make_optimizer(model.output.parameters())
        self.output_scale = 1 - self.beta if name.startswith("predsim") else 1.0

    def trainable_modules(self) -> nn.Module:
        modules = nn.ModuleDict({"model": self.model, "heads": self.heads})
        if self.target_projection is not None:
            modules["target_projection"] = self.target_projection
        return modules

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [*self.block_optimizers, self.output_optimizer]

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        self.heads.train()
        metrics: dict[str, Tensor] = {}
        h, pending = self.train_blocks(x, y, range(len(self.model.blocks)), metrics)
        return self.train_output(h, y, pending, metrics, x)

    # ------------------------------------------------------------------ layer-parallel stages
    # (locallearn.engine.pipeline): a unit is a hidden block with its heads

    stage_unit = "block"

    def stage_units(self) -> list[list[nn.Module]]:
        return [[block, heads] for block, heads in zip(self.model.blocks, self.heads)]

    def stage_output_modules(self) -> list[nn.Module]:
        return [self.model.output]

    def stage_metric_names(self) -> list[str]:
        """The keys of :meth:`train_step`'s values (and a last stage's), in order."""
        return ["loss", *(f"loss/block{index}" for index in range(len(self.model.blocks))), "loss/output",
                "train_error"]

    def train_stage(self, inputs: tuple[Tensor], y: Tensor, units: range,
                    metrics: dict[str, Tensor]) -> tuple[tuple[Tensor], None]:
        h, pending = self.train_blocks(inputs[0], y, units, metrics)
        self.step_and_free(pending)
        return (h,), None

    def train_last_stage(self, inputs: tuple[Tensor], y: Tensor, units: range, metrics: dict[str, Tensor],
                         send_error=None) -> dict[str, Tensor]:
        h, pending = self.train_blocks(inputs[0], y, units, metrics)
        return self.train_output(h, y, pending, metrics)

    def train_blocks(self, h_in: Tensor, y: Tensor, blocks: range,
                     metrics: dict[str, Tensor]) -> tuple[Tensor, torch.optim.Optimizer]:
        """Train the hidden blocks ``blocks`` (consecutive indices) on their input ``h_in``;
        returns the last one's emitted output and its optimiser, whose step is left to the
        caller (:meth:`step_and_free`); each block's loss goes into ``metrics``.

        Each block steps after the next block's backward: nothing downstream reads its
        parameters, so the update is the same, and in a data-parallel run its gradients'
        all-reduce overlaps that block's work (locallearn.engine.distributed). What a block's
        update needed (its graph, its output, its gradients) is freed once it is done, so the
        step holds one block's activations at a time (seed 004 §1). A block's output is
        emitted before the block steps, so the next block sees this batch's input as computed
        by the weights before this batch's update (what layer-parallel stages rely on)."""
        targets = self._targets(y)
        previous = None
        for index in blocks:
            block, optimizer = self.model.blocks[index], self.block_optimizers[index]
            loss, h = self.block_loss(index, h_in, y, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.step_and_free(previous)
            previous = optimizer
            metrics[f"loss/block{index}"] = loss.detach()
            with torch.no_grad():
                h_in = block.emit(h.detach())
            del h, loss
        return h_in, previous

    def block_loss(self, index: int, h_in: Tensor, y: Tensor,
                   targets: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Block ``index``'s local loss on its input ``h_in``, and its features."""
        with self.autocast():
            h = self.model.blocks[index].features(h_in)
            return self._local_loss(self.heads[index], h, y, self._targets(y) if targets is None else targets), h

    def output_loss(self, h_in: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The output layer's cross-entropy on the last block's output ``h_in``, and its logits."""
        with self.autocast():
            logits = self.model.output(h_in)
            return F.cross_entropy(logits.float(), y), logits

    def train_output(self, h_in: Tensor, y: Tensor, pending: torch.optim.Optimizer | None,
                     metrics: dict[str, Tensor], x: Tensor | None = None) -> dict[str, Tensor]:
        """Train the output layer on the last block's output ``h_in``, then step ``pending``
        (the last block's optimiser); the step's values with ``metrics``. ``x`` is the batch's
        input, which only a task whose error reads it needs (an autoencoder)."""
        output_loss, logits = self.output_loss(h_in, y)
        self.output_optimizer.zero_grad(set_to_none=True)
        (self.output_scale * output_loss).backward()
        self.step_and_free(pending)
        self.output_optimizer.step()
        output_loss = output_loss.detach()
        metrics["loss/output"] = output_loss
        return {"loss": output_loss, **metrics, "train_error": self.model.task.error(logits, x, y)}

    @staticmethod
    def step_and_free(optimizer: torch.optim.Optimizer | None) -> None:
        """Update a block, then drop its gradients (the next step recomputes them)."""
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def _targets(self, labels: Tensor) -> dict[str, Tensor]:
        """For the -bio losses: the binarised projection (pred) and its similarity matrix (sim)."""
        if self.target_projection is None:
            return {}
        projected = self.target_projection(labels)
        return {"bits": (projected > 0).float(), "similarity": similarity_matrix(projected)}

    def _local_loss(self, heads: nn.ModuleDict, h: Tensor, labels: Tensor, targets: dict[str, Tensor]) -> Tensor:
        loss = h.new_zeros((), dtype=torch.float32)
        if self.uses_pred:
            prediction = heads["pred"](h).float()
            pred = (F.binary_cross_entropy_with_logits(prediction, targets["bits"]) if self.bio
                    else F.cross_entropy(prediction, labels))
            loss = loss + (1 - self.beta) * pred
        if self.uses_sim:
            features = heads["sim"](h)
            sim = (similarity_matching_loss(features, target=targets["similarity"], check_values=False) if self.bio
                   else similarity_matching_loss(features, labels, num_classes=self.model.num_classes,
                                                 check_values=False))
            loss = loss + self.beta * sim
        return loss


RULES = {name: partial(LocalLosses, name=name) for name in LOCAL_LOSS_NAMES}
