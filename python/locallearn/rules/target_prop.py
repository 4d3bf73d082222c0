"""Target propagation: DTP (Lee et al. 2015, as seed 003 §2.1.2 and eq. (2) describe
it), DTP-σ (seed 002 §2.2, eqs. (8)–(10)), SDTP and AO-SDTP (seed 003 Algorithms 1
and 2), each optionally with seed 003 §5.6's hybrid targets.

Hidden layer ℓ (h_ℓ = f_ℓ(h_{ℓ−1}), one hidden block) learns from the local loss
‖f_ℓ(h_{ℓ−1}) − ĥ_ℓ‖² (summed over units, averaged over the batch) with h_{ℓ−1}
detached; the output layer learns from the output loss L (the cross-entropy, or the
reconstruction error of seed 003 §5.5's autoencoder, see :mod:`locallearn.models.tasks`). Targets run down through
learned inverses g_ℓ(h_ℓ) = σ(V_ℓ h_ℓ + c_ℓ) with the difference correction of eq. (2),

    ĥ_{ℓ−1} = h_{ℓ−1} + g_ℓ(ĥ_ℓ) − g_ℓ(h_ℓ),

which cancels an imperfect inverse's reconstruction error (ĥ_ℓ = h_ℓ gives ĥ_{ℓ−1} = h_{ℓ−1}
whatever g_ℓ is). The first hidden layer has no inverse. The variants differ in the top
target and in how the inverses learn, from activity corrupted by ε ~ N(0, σ²):

- dtp: ĥ_{L−1} = h_{L−1} − α ∂L/∂h_{L−1}, one gradient step (α = ``target_step``) through
  the output layer, L the example's own output loss; noise-preserving inverses (seed 003 §5.1):
  ‖g_ℓ(f_ℓ(h_{ℓ−1} + ε)) − (h_{ℓ−1} + ε)‖².
- dtp-sigma: dtp with seed 002's targets (eq. (8)), inverse loss (eq. (9)) and
  per-layer noise σ_ℓ = σ_{ℓ+1} − L_ℓ(ĥ_{ℓ−1}, h_{ℓ−1}), σ_L = α (eq. (10)); see
  :class:`DTPSigma` for how the paper's ambiguities are read.
- sdtp: no gradient at all: the output layer has an inverse g_L from the predicted class
  distribution o = softmax(logits), and ĥ_{L−1} = h_{L−1} − g_L(o) + g_L(ô) with ô the
  one-hot label (Algorithm 1); an autoencoder's o is its reconstruction and ô the input; denoising inverses (§5.1): ‖h_{ℓ−1} − g_ℓ(f_ℓ(h_{ℓ−1} + ε))‖².
- ao-sdtp: sdtp whose output is [o, z], z fixed random features of h_{L−1}, so that
  ĥ_{L−1} = h_{L−1} − g_L(o, z) + g_L(ô, z) (eq. (3), Algorithm 2).

Hybrid targets (§5.6, option ``hybrid_alpha`` = a): every inverse is replaced by the convex
combination a·g_bp + (1 − a)·g_tp, g_bp(h̃_ℓ) = (∂h_ℓ/∂h_{ℓ−1})ᵀ h̃_ℓ the layer's transposed
Jacobian at the current activity and g_tp the learned inverse. For the output layer g_bp is
the transposed Jacobian of the logits, so g_bp(ô) − g_bp(o) = −∂L/∂h_{L−1}. With a = 1 every
hidden layer's local-loss gradient is then backprop's gradient of the cross-entropy times
2α (dtp, dtp-sigma) or 2 (sdtp, ao-sdtp); a = 0 is pure target propagation.

Schedule (§2.1.2): "parallel" updates forward weights and inverses on every step;
"alternating" trains only the inverses in even epochs (from epoch 0) and only the forward
weights (hidden and output layers) in odd ones, switched by :meth:`begin_epoch`.

Networks: fully-connected and locally-connected blocks (an LC block's inverse is the
transpose of an LC map, seed 003 §5.4), without batch norm (a batch-normalised layer
mixes the examples of a batch and has no per-example inverse) or pooling. Dropout, if present, is
part of f_ℓ in training mode: dropped units are zero in h_ℓ and get no gradient from the
local loss, and the inverses learn from dropped-out activity; the papers use none.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor, nn

from locallearn.models import Network
from locallearn.rules.base import Rule
from locallearn.rules.inverses import LayerInverse, RandomFeatures, check_invertible

SCHEDULES = ("parallel", "alternating")


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """‖a − b‖² of every example (summed over all other dims): shape (batch,)."""
    return (a - b).pow(2).flatten(1).sum(1)


def widened(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 at least: targets and losses leave bfloat16 (amp), keep float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class TargetPropagation(Rule):
    """The machinery every variant shares (see the module docstring); a variant sets the
    top target (:meth:`_top_target`), the inverse noise (:meth:`noise_levels`), whether
    the output layer has an inverse and whether inverse training is denoising.

    ``seed`` draws the inverses' initial weights (and AO-SDTP's random features); the noise
    comes from torch's global generator, like dropout's masks, so ``torch.manual_seed``
    replays a step. Inverses have their own optimiser at ``inverse_lr`` (default ``lr``),
    as seed 003 §5.3 tunes separate Adam optimisers for forward and inverse weights."""

    tasks = ("classification", "reconstruction")
    denoising = False
    """Seed 003 §5.1: DTP's inverses reconstruct the corrupted activity, SDTP's the clean one."""

    def __init__(self, model: Network, *, lr: float, optimizer: str, weight_decay: float, amp: bool, seed: int,
                 inverse_lr: float | None, schedule: str, hybrid_alpha: float) -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        check_invertible(model, self.name)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if not 0 <= hybrid_alpha <= 1:
            raise ValueError(f"hybrid_alpha must be in [0, 1], got {hybrid_alpha}")
        if inverse_lr is not None and inverse_lr <= 0:
            raise ValueError(f"inverse_lr must be positive, got {inverse_lr}")
        self.schedule, self.hybrid_alpha = schedule, hybrid_alpha
        self.inverse_lr = lr if inverse_lr is None else inverse_lr
        self.inverses = self._make_inverses(torch.Generator().manual_seed(seed))
        if not self.inverses:
            raise ValueError(f"rule {self.name!r} needs at least two hidden blocks (the first has no inverse), "
                             f"{model.name} has one")
        parameter = next(model.parameters())
        self.trainable_modules().to(device=parameter.device, dtype=parameter.dtype)
        self.forward_optimizer = self.make_optimizer(model.parameters())
        self.inverse_optimizer = self.make_optimizer(self.inverses.parameters(), lr=self.inverse_lr)
        self.trains_forward = schedule == "parallel"
        self.trains_inverses = True

    def _make_inverses(self, generator: torch.Generator) -> nn.ModuleDict:
        """g_ℓ for hidden blocks 1 … L−2 (block 0, the first hidden layer, needs none),
        each parametrised like its block's layer (:class:`LayerInverse`)."""
        blocks, shapes = self.model.blocks, self.model.block_shapes
        activation = blocks[0].activation

        def inverse(k: int) -> LayerInverse:
            if blocks[k].kind == "locally_connected":
                return LayerInverse.of_locally_connected(blocks[k].layer, activation, generator)
            return LayerInverse.of_linear(shapes[k][0], shapes[k - 1], activation, generator)

        return nn.ModuleDict({f"block{k}": inverse(k) for k in range(1, len(blocks))})

    def begin_epoch(self, epoch: int) -> None:
        """Alternating schedule: inverses in even epochs, forward weights in odd ones."""
        if self.schedule == "alternating":
            self.trains_inverses, self.trains_forward = epoch % 2 == 0, epoch % 2 == 1

    def trainable_modules(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, "inverses": self.inverses})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.forward_optimizer, self.inverse_optimizer]

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Algorithm 1's order: forward pass, targets, then the inverse and forward updates
        (all from the same pre-update parameters, so their order does not matter)."""
        self.model.train()
        self.inverses.train()
        inputs, activities, logits = self._forward(x)
        targets = self._targets(inputs, activities, logits, x, y)
        block_losses = [squared_distance(widened(activity), target).mean()
                        for activity, target in zip(activities, targets)]
        output_loss = self.model.task.loss(logits, x, y)
        metrics = {f"loss/block{k}": loss.detach() for k, loss in enumerate(block_losses)}
        minimised = [*block_losses, output_loss] if self.trains_forward else []
        if self.trains_inverses:
            levels = self.noise_levels(activities, targets)
            inverse_losses = {key: self._inverse_loss(key, inputs, levels[key]) for key in self.inverses}
            minimised += inverse_losses.values()
            metrics.update({f"loss/{_inverse_name(key)}": loss.detach() for key, loss in inverse_losses.items()})
            metrics.update({f"noise/{_inverse_name(key)}": level.mean().detach()
                            for key, level in levels.items() if isinstance(level, Tensor)})
        self.forward_optimizer.zero_grad(set_to_none=True)
        self.inverse_optimizer.zero_grad(set_to_none=True)
        torch.stack(minimised).sum().backward()
        if self.trains_forward:
            self.forward_optimizer.step()
        if self.trains_inverses:
            self.inverse_optimizer.step()
        output_loss = output_loss.detach()
        return {"loss": output_loss, "loss/output": output_loss, **metrics,
                "train_error": self.model.task.error(logits, x, y)}

    def targets(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The hidden activities h_1 … h_{L−1} (training mode) and their targets ĥ_ℓ."""
        self.model.train()
        inputs, activities, logits = self._forward(x)
        targets = self._targets(inputs, activities, logits, x, y)
        return [widened(activity.detach()) for activity in activities], targets

    @abstractmethod
    def noise_levels(self, activities: list[Tensor], targets: list[Tensor]) -> dict[str, Tensor | float]:
        """The standard deviation σ of the noise each inverse learns from, by inverse."""

    @abstractmethod
    def _top_target(self, h_top: Tensor, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """ĥ_{L−1}, the target of the last hidden layer (``h_top`` is its activity, a leaf)."""

    def _output_code(self, activity: Tensor, h_top: Tensor) -> Tensor:
        """What the output layer's inverse reads: the output activity (SDTP: the class
        distribution; an autoencoder's reconstruction)."""
        return activity

    def _forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Each block's input (detached: a leaf that requires grad where a transposed
        Jacobian or ∂L/∂h_{L−1} is needed), each block's output and the logits."""
        inputs, activities = [], []
        h = x
        needs_jacobian = self.hybrid_alpha > 0
        with self.autocast():
            for k, block in enumerate(self.model.blocks):
                h = h.detach().requires_grad_(needs_jacobian and k > 0)
                inputs.append(h)
                h = block(h)
                activities.append(h)
            h = h.detach().requires_grad_(needs_jacobian or self._top_uses_gradient)
            inputs.append(h)
            logits = self.model.output(h)
        return inputs, activities, logits

    _top_uses_gradient = False
    """Whether the top target takes a gradient step without hybrid targets (DTP)."""

    def _loss_gradient(self, h_top: Tensor, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """∂L/∂h_{L−1} of every example's own output loss (not of the batch mean)."""
        loss = self.model.task.loss(logits, x, y, reduction="sum")
        return widened(torch.autograd.grad(loss, h_top, retain_graph=True)[0])

    def _targets(self, inputs: list[Tensor], activities: list[Tensor], logits: Tensor, x: Tensor,
                 y: Tensor) -> list[Tensor]:
        """ĥ_1 … ĥ_{L−1}, top down: eq. (2) mixed with g_bp as §5.6 says (module docstring)."""
        alpha = self.hybrid_alpha
        targets = [self._top_target(inputs[-1], logits, x, y)]
        for k in range(len(activities) - 1, 0, -1):
            h, h_target, h_below = activities[k], targets[0], widened(inputs[k].detach())
            target = h_below
            if alpha < 1:
                target = self._difference_target(self.inverses[f"block{k}"], h_below, h_target, h.detach())
            if alpha > 0:
                step = (h_target - widened(h.detach())).to(h.dtype)
                jacobian_t = torch.autograd.grad(h, inputs[k], grad_outputs=step, retain_graph=True)[0]
                target = (1 - alpha) * target + alpha * (h_below + widened(jacobian_t))
            targets.insert(0, target)
        return targets

    def _difference_target(self, inverse: nn.Module, h_below: Tensor, h_target: Tensor, h: Tensor) -> Tensor:
        """h_{ℓ−1} + g_ℓ(ĥ_ℓ) − g_ℓ(h_ℓ) (eq. (2); seed 002's eq. (8) as :class:`DTPSigma` reads
        it) in h_below's dtype: a fully-connected inverse by the fused op in that dtype (one
        GEMM for both inputs, :meth:`LayerInverse.difference_target`), any other (a
        locally-connected one's transpose map) by running g_ℓ twice under the rule's autocast."""
        with torch.no_grad():
            if isinstance(inverse, LayerInverse) and inverse.fused_activation is not None:
                return inverse.difference_target(h_below, h_target, h)
            with self.autocast():
                return h_below + widened(inverse(h_target.to(h.dtype)) - inverse(h))

    def _inverse_loss(self, key: str, inputs: list[Tensor], noise: Tensor | float) -> Tensor:
        """Reconstruction loss of one inverse from corrupted activity h̃ = h + ε (Algorithm 1)."""
        if key == "output":
            h = inputs[-1].detach()

            def layer(h_in: Tensor) -> Tensor:
                return self._output_code(self.model.task.output_activity(self.model.output(h_in)), h_in)
        else:
            k = int(key.removeprefix("block"))
            h, layer = inputs[k].detach(), self.model.blocks[k]
        corrupted = h + noise * torch.randn_like(h)
        with self.autocast():
            with torch.no_grad():
                encoded = layer(corrupted)
            reconstruction = widened(self.inverses[key](encoded))
        clean = h if self.denoising else corrupted
        return squared_distance(reconstruction, widened(clean)).mean()


class DTP(TargetPropagation):
    """Difference target propagation (Lee et al. 2015; seed 003 §2.1.2, eq. (2)): the top
    target is a gradient step of size ``target_step`` (α, seed 003 Table 4 searches
    [0.01, 0.2]); inverses learn with noise of standard deviation ``inverse_noise``
    (σ, Table 4: [0.01, 0.3]) and keep it in their target (noise-preserving, §5.1)."""

    name = "dtp"
    _top_uses_gradient = True

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, target_step: float = 0.1, inverse_noise: float = 0.1,
                 inverse_lr: float | None = None, schedule: str = "parallel", hybrid_alpha: float = 0.0) -> None:
        if target_step <= 0:
            raise ValueError(f"target_step must be positive, got {target_step}")
        if inverse_noise < 0:
            raise ValueError(f"inverse_noise must be non-negative, got {inverse_noise}")
        self.target_step, self.inverse_noise = target_step, inverse_noise
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp, seed=seed,
                         inverse_lr=inverse_lr, schedule=schedule, hybrid_alpha=hybrid_alpha)

    def noise_levels(self, activities: list[Tensor], targets: list[Tensor]) -> dict[str, Tensor | float]:
        return {key: self.inverse_noise for key in self.inverses}

    def _top_target(self, h_top: Tensor, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return widened(h_top.detach()) - self.target_step * self._loss_gradient(h_top, logits, x, y)


class DTPSigma(DTP):
    """DTP-σ (seed 002 §2.2): DTP whose inverse noise adapts per layer and per example.

    The inverse g_ℓ of hidden layer ℓ (block ℓ − 1; inverse ``block<ℓ−1>``), trained on noise
    injected into h_{ℓ−1} (eq. (9)), uses σ_ℓ = σ_{ℓ+1} − L_ℓ(ĥ_{ℓ−1}, h_{ℓ−1}) (eq. (10)), with
    σ_L = α = ``target_step``
    at the output layer ("equal to the step-size used to compute the top-most target";
    0.01, the constant the paper multiplies the top target by) and L_ℓ the Gaussian loss
    of eq. (3) with σ² = ½, Σ_i (ĥ_{ℓ−1,i} − h_{ℓ−1,i})², for each example. How the paper
    is read where it is ambiguous:

    - eq. (8) reads ĥ_{ℓ−1} = h_{ℓ−1} − (g(h_ℓ) + g(ĥ_ℓ)), which does not vanish when
      ĥ_ℓ = h_ℓ; the text ("decode two times", DTP [19]) means DTP's h_{ℓ−1} − g(h_ℓ) + g(ĥ_ℓ),
      which is what is used. Its decoder φ(V h) has no bias ("biases omitted for clarity",
      §2.1); g keeps c_ℓ.
    - The top target is DTP's gradient step on h_{L−1} with α = 0.01.
    - σ_ℓ is per example (eq. (10) is written for one example) and may fall below zero;
      only σ_ℓ² matters for ε ~ N(0, σ_ℓ²), so ε = σ_ℓ·N(0, 1) is drawn as written.
    - Inverses keep the noise in their target (eq. (9), the decoder loss L(ẑ, ŷ) compares
      the reconstruction with the corrupted activity), as in DTP.
    """

    name = "dtp-sigma"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, target_step: float = 0.01, inverse_lr: float | None = None,
                 schedule: str = "parallel", hybrid_alpha: float = 0.0) -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp, seed=seed,
                         target_step=target_step, inverse_noise=0.0, inverse_lr=inverse_lr, schedule=schedule,
                         hybrid_alpha=hybrid_alpha)

    def noise_levels(self, activities: list[Tensor], targets: list[Tensor]) -> dict[str, Tensor | float]:
        """σ_ℓ of eq. (10) for every inverse, shaped (batch, 1, …) to broadcast over the activity, top down from σ_L = α."""
        sigma = targets[0].new_full((targets[0].shape[0],), self.target_step)
        levels = {}
        for k in range(len(activities) - 1, 0, -1):
            sigma = sigma - squared_distance(targets[k - 1], widened(activities[k - 1].detach()))
            levels[f"block{k}"] = sigma.reshape(-1, *[1] * (activities[k - 1].dim() - 1))
        return levels


class SDTP(TargetPropagation):
    """Simplified DTP (seed 003 Algorithm 1): the top target comes through the output
    layer's learned inverse from the one-hot label, so no gradient is used anywhere;
    inverses learn denoising (§5.1) with noise of standard deviation ``inverse_noise``."""

    name = "sdtp"
    denoising = True

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, inverse_noise: float = 0.1, inverse_lr: float | None = None,
                 schedule: str = "parallel", hybrid_alpha: float = 0.0) -> None:
        if inverse_noise < 0:
            raise ValueError(f"inverse_noise must be non-negative, got {inverse_noise}")
        self.inverse_noise = inverse_noise
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp, seed=seed,
                         inverse_lr=inverse_lr, schedule=schedule, hybrid_alpha=hybrid_alpha)

    def _make_inverses(self, generator: torch.Generator) -> nn.ModuleDict:
        inverses = super()._make_inverses(generator)
        code_size = self.model.num_classes + self._auxiliary_size()
        inverses["output"] = LayerInverse.of_linear(code_size, self.model.block_shapes[-1],
                                                    self.model.blocks[0].activation, generator)
        return inverses

    def _auxiliary_size(self) -> int:
        return 0

    def noise_levels(self, activities: list[Tensor], targets: list[Tensor]) -> dict[str, Tensor | float]:
        return {key: self.inverse_noise for key in self.inverses}

    def _top_target(self, h_top: Tensor, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """ĥ_{L−1} = h_{L−1} − g_L(o) + g_L(ô), with §5.6's g_bp term when hybrid; o is the
        output activity, ô = argmin L (the one-hot label; the input for an autoencoder)."""
        alpha = self.hybrid_alpha
        target = widened(h_top.detach())
        if alpha < 1:
            h = h_top.detach()
            predicted = self.model.task.output_activity(logits.detach()).to(h.dtype)
            correct = self.model.task.best_output(x, y).to(h.dtype)
            inverse = self.inverses["output"]
            with torch.no_grad(), self.autocast():
                difference = inverse(self._output_code(correct, h)) - inverse(self._output_code(predicted, h))
            target = target + (1 - alpha) * widened(difference)
        if alpha > 0:
            target = target - alpha * self._loss_gradient(h_top, logits, x, y)
        return target


class AOSDTP(SDTP):
    """Auxiliary-output SDTP (seed 003 Algorithm 2, eq. (3)): the output is [o, z] with z
    ``aux_features`` fixed random features of h_{L−1} (512 in §3.2), so the output layer's
    inverse g_L(o, z) sees more of the input than the class distribution."""

    name = "ao-sdtp"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, inverse_noise: float = 0.1, inverse_lr: float | None = None,
                 schedule: str = "parallel", hybrid_alpha: float = 0.0, aux_features: int = 512) -> None:
        if aux_features < 1:
            raise ValueError(f"aux_features must be positive, got {aux_features}")
        self.aux_features = aux_features
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp, seed=seed,
                         inverse_noise=inverse_noise, inverse_lr=inverse_lr, schedule=schedule,
                         hybrid_alpha=hybrid_alpha)

    def _make_inverses(self, generator: torch.Generator) -> nn.ModuleDict:
        self.auxiliary = RandomFeatures(math.prod(self.model.block_shapes[-1]), self.aux_features,
                                        self.model.blocks[0].activation, generator)
        return super()._make_inverses(generator)

    def _auxiliary_size(self) -> int:
        return self.aux_features

    def trainable_modules(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, "inverses": self.inverses, "auxiliary": self.auxiliary})

    def _output_code(self, distribution: Tensor, h_top: Tensor) -> Tensor:
        return torch.cat([distribution, self.auxiliary(h_top)], dim=1)


def _inverse_name(key: str) -> str:
    """``inverse<k>`` for hidden block k's inverse, ``inverse_output`` for the output layer's."""
    return "inverse_output" if key == "output" else f"inverse{key.removeprefix('block')}"


RULES = {"dtp": DTP, "dtp-sigma": DTPSigma, "sdtp": SDTP, "ao-sdtp": AOSDTP}
