"""Associated Learning, AL (seed 001 §2, eqs. (1)–(7)).

The network is split into components i = 1..K, each a run of consecutive hidden blocks:
by default the Network's own groups (``Network.block_groups``: one per hidden block, and
for the CIFAR ResNets the first convolution, then one per stage, as the authors'
``ResNet_AL``), or, with ``al_blocks_per_component = k``, k blocks each. Seed 001's
authors (SamYWK/Associated_Learning, MNIST/models.py) make their MLP two components of
one 1024-unit layer (``MLP_AL``) and their CNN four components of two convolutions
(``CNN_AL``), each with a two-layer sigmoid bridge (5 × the target width, then the target
width: ``al_loss``); the seed 001 recipes in configs/ set those values.

- forward function sᵢ = fᵢ(sᵢ₋₁), s₀ = x (eq. (1)): the component's hidden blocks
  composed (with their pooling, if any), the input detached, so that no gradient crosses
  a component boundary; for conv and residual blocks sᵢ is a (C, H, W) feature map. Batch
  norm inside fᵢ is allowed: it normalises sᵢ₋₁'s batch within the component and adds no
  path between components (seed 001 §3 trains the ResNets with it);
- target encoder tᵢ = gᵢ(tᵢ₋₁) = σ(Qᵢ tᵢ₋₁), t₀ = the one-hot label (eq. (2); the paper's yᵢ);
- inverse decoder hᵢ(tᵢ) = σ(Vᵢ tᵢ), mapping tᵢ back to tᵢ₋₁'s space (eq. (4));
- bridge bᵢ: ``al_bridge_depth`` sigmoid layers (hidden width ``al_bridge_width``) from
  sᵢ, flattened, to tᵢ's space (§2.3); depth 0 is eq. (3)'s plain ‖sᵢ − tᵢ‖² (sᵢ flattened)
  and needs sᵢ and tᵢ of one size.

Targets are vectors for every component (gᵢ, hᵢ are linear + sigmoid between target
spaces). The width of tᵢ is ``al_target_width`` when set, for every component; otherwise
a linear component's is its sᵢ's width, and a conv component's is
:data:`CONV_TARGET_WIDTH` (256) when it has a bridge, or C·H·W without one (eq. (3)).
The paper gives no target width; 256 is that of the targets in the authors' CNN code
(their ResNets use 300), and it keeps the target autoencoders small, where C·H·W (25,088
for 32×28×28) would not. The bridge is what maps the large flattened map down to it:
§2.3 introduces bridges "especially for convolutional neural networks".

Component i descends two local losses (§2.4: "fᵢs and bᵢs minimize the forward loss,
gᵢs and hᵢs minimize the inverse loss"):

- forward loss ‖bᵢ(sᵢ) − tᵢ‖² (eq. (6)), summed over units and averaged over the batch,
  with tᵢ detached: it trains fᵢ and bᵢ only (the authors' code takes the mean over units
  too, which Adam's per-parameter scaling makes immaterial);
- inverse loss MSE(hᵢ(gᵢ(tᵢ₋₁)), tᵢ₋₁) (eq. (5)) with tᵢ₋₁ detached: it trains gᵢ and hᵢ only.

Every loss therefore reaches one component's parameters, and one backward of their sum
gives each parameter exactly its own loss's gradient. Prediction is eq. (7) with the last
bridge (§2.4): ŷ₀ = h₁ ∘ … ∘ h_K ∘ b_K ∘ f_K ∘ … ∘ f₁(x). :meth:`predict` returns the
pre-sigmoid values of h₁, so ŷ₀ = σ(logits) and the argmax is the class; the Network's
own output layer is unused (neither trained nor read). Effective parameters are those of
the fᵢ, hᵢ and b_K; the gᵢ and the other bridges are affiliated: they shape training but
not the predictions (§2.4).

Seed 001 §3 uses ELU for the fᵢ (the hidden blocks' activation, set when the model is
built: ``--activation elu``), sigmoid for gᵢ, hᵢ, bᵢ, He-normal initialisation of every
weight (``--init he`` for the fᵢ; AL's own layers always), Adam and batch 32 (the
default batch size of ``locallearn train --rule al``), no batch norm or dropout in its
MLP and CNN (build them with ``batch_norm=False``) and batch norm in its ResNets. AL
refuses dropout here, and locally-connected blocks. Its MLP is the model ``mlp-seed001``
and its CNN ``cnn-seed001``; their backprop baselines ``mlp-seed001-matched`` and
``cnn-seed001-matched`` are AL's effective path as plain layers, with exactly AL's
effective parameters under the authors' bridges (§3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.models import Network
from locallearn.models.init import initialize
from locallearn.models.tasks import at_least_float32
from locallearn.rules.base import Rule

CONV_TARGET_WIDTH = 256
"""Default width of a conv component's target tᵢ when it has a bridge (see the module docstring)."""

INVERSE_LR_FACTOR = 2.0
"""The rate of the gᵢ and hᵢ (the inverse loss, eq. (5)) relative to that of the fᵢ and bᵢ: 2
in the authors' code (SamYWK/Associated_Learning, MNIST/main.py: ``inv_learning_rate: lr * 2``);
the paper gives one rate."""


class SigmoidLayers(nn.Sequential):
    """Linear layers each followed by a sigmoid (gᵢ, hᵢ of eqs. (2), (4) and the bridges of
    §2.3), He-normal weights and zero biases (seed 001 §3); with ``flatten``, an nn.Flatten
    first (the bridge of a conv component)."""

    def __init__(self, sizes: list[int], flatten: bool = False) -> None:
        super().__init__()
        if flatten:
            self.append(nn.Flatten())
        for size_in, size_out in zip(sizes, sizes[1:]):
            layer = nn.Linear(size_in, size_out)
            initialize(layer, "he")
            self.extend([layer, nn.Sigmoid()])


SPATIAL_KINDS = ("conv", "residual")


def require_splittable(model: Network) -> None:
    """Refuse, before any work, a network AL cannot split into components here: no hidden
    blocks, locally-connected blocks, a conv or residual block after a linear one, dropout."""
    if not model.blocks:
        raise ValueError(f"AL trains hidden layers and {model.name} has none")
    kinds = [block.kind for block in model.blocks]
    if any(kind not in (*SPATIAL_KINDS, "linear") for kind in kinds):
        raise ValueError(f"AL is defined here for convolutional, residual and fully-connected blocks (seed 001 "
                         f"eq. (1), one component per group of hidden blocks); {model.name} has "
                         f"{'/'.join(sorted(set(kinds)))} blocks: use an mlp or a conv net such as cnn-seed001")
    if "linear" in kinds and any(kind in SPATIAL_KINDS for kind in kinds[kinds.index("linear"):]):
        raise ValueError(f"AL needs the conv blocks of {model.name} before its linear ones, got {kinds}")
    if any(not isinstance(block.dropout, nn.Identity) for block in model.blocks):
        raise ValueError(f"AL's layers are plain (seed 001 §3), without dropout; build {model.name} with dropout=0")


def component_groups(model: Network, blocks_per_component: int | None) -> tuple[tuple[int, ...], ...]:
    """The hidden blocks' indices of each component: the Network's own groups, or runs of
    ``blocks_per_component`` consecutive blocks of a network whose blocks are ungrouped."""
    if blocks_per_component is None:
        return model.block_groups
    if blocks_per_component < 1:
        raise ValueError(f"al_blocks_per_component must be ≥ 1 (or unset: the network's own groups), "
                         f"got {blocks_per_component}")
    sizes = [len(group) for group in model.block_groups]
    if max(sizes) > 1:
        raise ValueError(f"{model.name} groups its hidden blocks itself, {tuple(sizes)} per group, one AL "
                         f"component each (as the authors' ResNet_AL has one per stage); leave "
                         f"al_blocks_per_component unset")
    count = len(model.blocks)
    if count % blocks_per_component:
        raise ValueError(f"al_blocks_per_component={blocks_per_component} does not divide {model.name}'s "
                         f"{count} hidden blocks into components")
    return tuple(tuple(range(start, start + blocks_per_component))
                 for start in range(0, count, blocks_per_component))


def component_output_shapes(model: Network, groups: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """The shape of every sᵢ = fᵢ(sᵢ₋₁) for one example: the features of the last block of
    component i, pooled if it pools."""
    shapes = []
    for group in groups:
        block, shape = model.blocks[group[-1]], model.block_shapes[group[-1]]
        if isinstance(block.pool, nn.MaxPool2d):
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        shapes.append(tuple(shape))
    return shapes


class AssociatedLearning(Rule):
    """AL on an MLP, a conv-then-linear network or a ResNet (see the module docstring)."""

    name = "al"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, al_blocks_per_component: int | None = None, al_bridge_depth: int = 1,
                 al_bridge_width: int | None = None, al_target_width: int | None = None,
                 al_inverse_lr_factor: float = INVERSE_LR_FACTOR) -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        require_splittable(model)
        self.groups = component_groups(model, al_blocks_per_component)
        if al_bridge_depth < 0:
            raise ValueError(f"al_bridge_depth must be ≥ 0 (0: no bridge, eq. (3)), got {al_bridge_depth}")
        if al_bridge_width is not None and al_bridge_width < 1:
            raise ValueError(f"al_bridge_width must be ≥ 1 (or unset: the target width), got {al_bridge_width}")
        if al_target_width is not None and al_target_width < 1:
            raise ValueError(f"al_target_width must be ≥ 1 (or unset: each sᵢ's width), got {al_target_width}")
        if al_inverse_lr_factor <= 0:
            raise ValueError(f"al_inverse_lr_factor must be positive, got {al_inverse_lr_factor}")
        shapes = component_output_shapes(model, self.groups)
        feature_widths = [math.prod(shape) for shape in shapes]
        target_widths = [al_target_width or (CONV_TARGET_WIDTH if len(shape) > 1 and al_bridge_depth
                                             else width) for width, shape in zip(feature_widths, shapes)]
        if al_bridge_depth == 0 and feature_widths != target_widths:
            raise ValueError(f"without a bridge (al_bridge_depth=0) the forward loss ‖sᵢ − tᵢ‖² (eq. (3)) needs "
                             f"targets as wide as the (flattened) hidden layers {feature_widths}, got "
                             f"al_target_width={al_target_width}; leave it unset or use al_bridge_depth ≥ 1")
        sizes = [model.num_classes, *target_widths]
        self.encoders = nn.ModuleList(SigmoidLayers([sizes[i], sizes[i + 1]]) for i in range(len(feature_widths)))
        self.decoders = nn.ModuleList(SigmoidLayers([sizes[i + 1], sizes[i]]) for i in range(len(feature_widths)))
        self.bridges = nn.ModuleList(
            SigmoidLayers([width, *[al_bridge_width or target] * (al_bridge_depth - 1), target],
                          flatten=len(shape) > 1)
            if al_bridge_depth else (nn.Flatten() if len(shape) > 1 else nn.Identity())
            for width, target, shape in zip(feature_widths, target_widths, shapes))
        parameter = next(model.parameters())
        self.associated.to(device=parameter.device, dtype=parameter.dtype)
        self.optimizer = self.make_optimizer([
            {"params": [*self.forward_parameters(), *self.bridges.parameters()]},
            {"params": [*self.encoders.parameters(), *self.decoders.parameters()], "lr": lr * al_inverse_lr_factor},
        ])

    @property
    def components(self) -> list[nn.Sequential]:
        """The fᵢ: the Network's hidden blocks of component i, composed (the blocks themselves, not copies)."""
        return [nn.Sequential(*(self.model.blocks[index] for index in group)) for group in self.groups]

    @property
    def associated(self) -> nn.ModuleDict:
        """AL's own modules: the gᵢ (encoders), hᵢ (decoders) and bᵢ (bridges)."""
        return nn.ModuleDict({"encoders": self.encoders, "decoders": self.decoders, "bridges": self.bridges})

    def forward_parameters(self) -> list[nn.Parameter]:
        """The fᵢ's parameters (the hidden blocks'; the Network's output layer is not used)."""
        return [p for block in self.model.blocks for p in block.parameters()]

    def effective_parameters(self) -> list[nn.Parameter]:
        """§2.4: the parameters of the fᵢ, the hᵢ and the last bridge, all that eq. (7) reads."""
        return [*self.forward_parameters(), *self.decoders.parameters(), *self.bridges[-1].parameters()]

    def affiliated_parameters(self) -> list[nn.Parameter]:
        """§2.4: the gᵢ and the bridges b₁ … b_{K−1}, which only shape training."""
        return [*self.encoders.parameters(), *(p for bridge in self.bridges[:-1] for p in bridge.parameters())]

    def trainable_modules(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, **self.associated})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def local_losses(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """(forward losses (eq. (6)), inverse losses (eq. (5)), s_K) of one batch, one per
        component, each with a graph reaching that component's parameters only."""
        target = F.one_hot(y, self.model.num_classes).to(next(self.model.parameters()).dtype)
        forward_losses, inverse_losses, s, _ = self.component_losses(x, target, range(len(self.groups)))
        return forward_losses, inverse_losses, s

    def component_losses(self, s: Tensor, target: Tensor,
                         components: range) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
        """The forward and inverse losses of ``components`` (consecutive), from the previous
        component's sᵢ₋₁ and tᵢ₋₁ (x and the one-hot label for the first), and the last
        one's sᵢ and tᵢ."""
        forward_losses, inverse_losses, functions = [], [], self.components
        with self.autocast():
            for index in components:
                s = functions[index](s.detach())  # eq. (1)
                previous = target.detach()
                target = self.encoders[index](previous)  # eq. (2)
                difference = at_least_float32(self.bridges[index](s)) - at_least_float32(target.detach())
                forward_losses.append(difference.square().sum(dim=1).mean())  # eq. (6)
                reconstruction = at_least_float32(self.decoders[index](target))  # eq. (4)
                inverse_losses.append(F.mse_loss(reconstruction, at_least_float32(previous)))  # eq. (5)
        return forward_losses, inverse_losses, s, target

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        forward_losses, inverse_losses, s = self.local_losses(x, y)
        loss = torch.stack(forward_losses).sum() + torch.stack(inverse_losses).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the losses share no parameters: each gets its own gradient
        self.optimizer.step()
        with torch.no_grad():
            logits = self.decode(s.detach())
        metrics = {f"loss/forward{i}": value.detach() for i, value in enumerate(forward_losses)}
        metrics.update({f"loss/inverse{i}": value.detach() for i, value in enumerate(inverse_losses)})
        return {"loss": loss.detach(), **metrics, "train_error": self.model.task.error(logits, x, y)}

    # ------------------------------------------------------------------ layer-parallel stages
    # (locallearn.engine.pipeline): a unit is a component with its gᵢ, hᵢ and bᵢ

    stage_unit = "component"

    def stage_units(self) -> list[list[nn.Module]]:
        return [[*(self.model.blocks[index] for index in group), encoder, decoder, bridge]
                for group, encoder, decoder, bridge in zip(self.groups, self.encoders, self.decoders, self.bridges)]

    def stage_output_modules(self) -> list[nn.Module]:
        return []  # the Network's output layer is unused

    def stage_metric_names(self) -> list[str]:
        """The last stage's values: those of :meth:`train_step` but the training error, whose
        eq. (7) reads every component's decoder, held by every stage."""
        return ["loss", *(f"loss/forward{i}" for i in range(len(self.groups))),
                *(f"loss/inverse{i}" for i in range(len(self.groups)))]

    def train_stage(self, inputs: tuple[Tensor, ...], y: Tensor, components: range,
                    metrics: dict[str, Tensor]) -> tuple[tuple[Tensor, Tensor], None]:
        """Train ``components`` on (sᵢ₋₁, tᵢ₋₁), or on (x,) and the labels for the first;
        returns their (sᵢ, tᵢ). Only their parameters get gradients, so the one optimiser
        steps only them."""
        if components.start == 0:
            inputs = inputs[0], F.one_hot(y, self.model.num_classes).to(next(self.model.parameters()).dtype)
        forward_losses, inverse_losses, s, target = self.component_losses(*inputs, components)
        self.optimizer.zero_grad(set_to_none=True)
        (torch.stack(forward_losses).sum() + torch.stack(inverse_losses).sum()).backward()
        self.optimizer.step()
        for index, forward, inverse in zip(components, forward_losses, inverse_losses):
            metrics[f"loss/forward{index}"], metrics[f"loss/inverse{index}"] = forward.detach(), inverse.detach()
        return (s.detach(), target.detach()), None

    def train_last_stage(self, inputs: tuple[Tensor, ...], y: Tensor, components: range,
                         metrics: dict[str, Tensor], send_error=None) -> dict[str, Tensor]:
        self.train_stage(inputs, y, components, metrics)
        count = len(self.groups)
        loss = (torch.stack([metrics[f"loss/forward{i}"] for i in range(count)]).sum() +
                torch.stack([metrics[f"loss/inverse{i}"] for i in range(count)]).sum())
        return {"loss": loss, **{name: metrics[name] for name in self.stage_metric_names()[1:]}}

    def decode(self, s: Tensor) -> Tensor:
        """Eq. (7) from s_K: h₁ ∘ … ∘ h_K ∘ b_K, returning h₁'s pre-sigmoid values (logits), in
        float32 (float64 for a float64 network)."""
        with self.autocast():
            t = self.bridges[-1](s)
            for decoder in reversed(self.decoders[1:]):
                t = decoder(t)
            return at_least_float32(self.decoders[0][0](t))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Eq. (7): class scores whose sigmoid is ŷ₀ (argmax: the class)."""
        self.model.eval()
        with self.autocast():
            for block in self.model.blocks:
                x = block(x)
        return self.decode(x)

    @torch.no_grad()
    def activations(self, x: Tensor) -> list[Tensor]:
        """Every sᵢ (eq. (1)), one per component, then the logits of eq. (7) (the Network's
        output layer is unused)."""
        self.model.eval()
        outputs = []
        with self.autocast():
            for component in self.components:
                x = component(x)
                outputs.append(x.float())
        return [*outputs, self.decode(x)]

    def parameter_counts(self) -> dict[str, int]:
        """§2.4 / §3: the parameters AL trains, those prediction uses (effective), the rest
        (affiliated), and what a backprop network of the same hidden layers has."""
        effective = sum(p.numel() for p in self.effective_parameters())
        affiliated = sum(p.numel() for p in self.affiliated_parameters())
        return {"effective": effective, "affiliated": affiliated, "total": effective + affiliated,
                "backprop": sum(p.numel() for p in self.model.parameters())}


RULES = {"al": AssociatedLearning}
