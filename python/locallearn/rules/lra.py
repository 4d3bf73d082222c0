"""Error-driven Local Representation Alignment, LRA-E (seed 002 §2.1, Algorithms 1–2).

Every layer ℓ has pre-activities hˡ = Wˡ zˡ⁻¹ + cˡ and post-activities zˡ = φˡ(hˡ)
(eq. (1)); the output is a softmax. Targets come top-down through error units and
error weights Eˡ (one per layer but the first, footnote 2), never through Wᵀ:

- output error units eᴸ = −y / zᴸ, the derivative of the categorical NLL (eq. (2)), or
  zᴸ − y as the authors' code computes them (a setting, below);
- target of the layer below yˡ⁻¹ = φ(hˡ⁻¹ − β Eˡ eˡ) (eq. (5)), β = 0.1 (footnote 1);
- hidden error units eˡ = ∂ℒˡ(yˡ, zˡ)/∂zˡ of a Gaussian (eq. (3)) or Cauchy (eq. (4))
  local loss, with the factor κ in front of (y − z) a setting (below);
- updates ΔWˡ = (eˡ ⊗ φ'(hˡ)) zˡ⁻¹ᵀ (rule 1, eq. (6)) or ΔWˡ = eˡ zˡ⁻¹ᵀ (rule 2,
  eq. (7)), and ΔEˡ = γ ΔWˡᵀ for both (eq. (7)'s sign; see below).

These updates are not the gradient of one loss, so they are computed in closed form,
averaged over the mini-batch. ΔW goes to the optimiser as ``.grad`` (W ← W − λΔW for
SGD, as in §3); the biases, left out "for clarity", get the same rule with zˡ⁻¹ → 1.
ΔE goes as ``.grad`` to plain SGD at the forward optimiser's rate (scheduled alike), a
step E ← E − λΔE: for SGD that is the paper's update, and with Adam it keeps γ's
purpose, error weights that change more slowly than the forward weights (§2.1), which
Adam's normalisation of each parameter's step would cancel.

At the softmax output, eᴸ ⊗ φ'(hᴸ) is read as the softmax's Jacobian applied to eᴸ,
which is zᴸ − y; rule 2 keeps it there too and drops φ' of the hidden layers only
(the derivatives it is meant to avoid, §2.1): eᴸ zᴸ⁻¹ᵀ = −(y/zᴸ) zᴸ⁻¹ᵀ is unbounded and
never vanishes, and with it an MLP on digits diverged within 200 SGD steps at λ = 0.01.

The sign of ΔE. Eq. (6) prints ΔEˡ = −γ ΔWˡᵀ, eq. (7) ΔEˡ = γ ΔWˡᵀ; both ΔW are descent
directions (W ← W − λΔW), so as printed rule 1 moves E against Wᵀ and rule 2 with it. The
targets of eq. (5) need E to carry the error down as Wᵀ would (the Kolen–Pollack idea the
paper cites as [35]: feedback weights that receive the forward weights' updates come to
equal them), and the authors' code (github.com/AnkurMali/LRA-E, fmnist/fmnist.py,
compute_lra_updates) applies γ·ΔW to E in the same descent step as ΔW to W. So both rules
use ΔE = γΔWᵀ here, E ← E − λγΔWᵀ, and eq. (6)'s minus sign is read as a slip. The paper
gives no γ, only "less than 1.0"; the authors' code uses 1.0, and so do we.

The factor of the error units. Eq. (5) and Algorithm 1 write eˡ = −2(yˡ − zˡ); eq. (3) prints
eˡ = −(2σ²)(yˡ − zˡ) and says σ² = ½ "gets rid of the multiplicative factor entirely", i.e.
eˡ = −(yˡ − zˡ), which is what the authors' code computes (e3 = hhat2 − y3_z). κ (``lra_error_factor``)
picks: 1 (the default: eq. (3) as printed, the code) or 2 (eq. (5)). It matters with depth: a
layer's pre-activation displacement β E e is about β κ √width times the displacement y − z of the
layer above (3.2 at κ = 2 with E of std 1 over 256 units), before tanh compresses it
(docs/RESULTS.md measures it: at 8 layers on Fashion-MNIST, 22.1 % test error after 20
epochs with κ = 2, 16.2 % with κ = 1). For the Cauchy loss κ scales eq. (4)'s factor 2 the same way.

The output error units. Eq. (2) gives eᴸ = −y/zᴸ, the NLL's derivative in the softmax's output
(``lra_output_error = "nll"``, the default); the authors' code uses its derivative in the
logits, eᴸ = zᴸ − y (``e4 = z4 − Y``), for the targets as for the output update
(``"residual"``). They differ in size: |−y/zᴸ| = 1/z_c grows without bound as the true class's
probability falls, |zᴸ − y| is at most √2, so the top hidden layer's targets move much further
under eq. (2).

Initialisation. The paper's "zero-mean Gaussian distribution, with variance of 0.05" (§4)
read literally (std 0.224) saturates tanh at the start; the authors' code draws the forward
weights with std 0.1 and the error weights with std 1.0. The error weights' default here is
the code's; the recipe (configs/seed002-fashion-mnist-lra-e.toml) sets the forward weights'.
Three Fashion-MNIST epochs under seed 002's protocol (docs/RESULTS.md): 27.7 % test error
with the literal reading, 17.4 % with the code's scales (rule 1) and 19.2 % (rule 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.models import Network
from locallearn.models.tasks import at_least_float32
from locallearn.rules.base import Rule, require_plain_mlp

UPDATE_RULES = (1, 2)
OUTPUT_ERRORS = ("nll", "residual")


class LocalLoss(NamedTuple):
    """A hidden layer's local loss ℒ(y, z), summed over units, and its error units ∂ℒ/∂z."""

    value: Callable[[Tensor, Tensor], Tensor]
    error: Callable[[Tensor, Tensor], Tensor]


def gaussian_loss(target: Tensor, z: Tensor) -> Tensor:
    """Seed 002 eq. (3) with σ² = ½: Σᵢ (yᵢ − zᵢ)², one value per row."""
    return (target - z).pow(2).sum(dim=-1)


def gaussian_error(target: Tensor, z: Tensor) -> Tensor:
    """Its derivative in z: −2(y − z), as in eq. (5) and Algorithm 1."""
    return -2 * (target - z)


def cauchy_loss(target: Tensor, z: Tensor) -> Tensor:
    """Seed 002 eq. (4): Σᵢ log(1 + (yᵢ − zᵢ)²), one value per row."""
    return torch.log1p((target - z).pow(2)).sum(dim=-1)


def cauchy_error(target: Tensor, z: Tensor) -> Tensor:
    """Its derivative in z: −2(y − z) / (1 + (y − z)²) (eq. (4))."""
    difference = target - z
    return -2 * difference / (1 + difference.pow(2))


LOCAL_LOSSES = {"gaussian": LocalLoss(gaussian_loss, gaussian_error), "cauchy": LocalLoss(cauchy_loss, cauchy_error)}


@dataclass
class Representations:
    """What Algorithm 1 returns (Λ), for one mini-batch; index 0 is the first hidden
    layer, the last entry the output. ``inputs[ℓ]`` is zˡ⁻¹ (the input x for ℓ = 0)."""

    inputs: list[Tensor]
    pre_activations: list[Tensor]
    post_activations: list[Tensor]
    targets: list[Tensor]
    errors: list[Tensor]


class LocalRepresentationAlignment(Rule):
    """LRA-E on an MLP (see the module docstring)."""

    name = "lra-e"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, lra_beta: float = 0.1, lra_gamma: float = 1.0,
                 lra_update_rule: int = 1, lra_loss: str = "gaussian", lra_error_std: float = 1.0,
                 lra_error_factor: float = 1.0, lra_output_error: str = "nll") -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        require_plain_mlp(model, "LRA-E", "seed 002 eq. (1), hˡ = Wˡ zˡ⁻¹")
        if lra_beta <= 0:
            raise ValueError(f"lra_beta must be positive (seed 002 uses 0.1), got {lra_beta}")
        if not 0 <= lra_gamma <= 1:
            raise ValueError(f"lra_gamma must be in [0, 1] (seed 002 §2.1: less than 1.0, the authors' code 1.0; "
                             f"0 keeps the error weights fixed), got {lra_gamma}")
        if lra_update_rule not in UPDATE_RULES:
            raise ValueError(f"lra_update_rule must be 1 (eq. (6), with φ') or 2 (eq. (7), without), "
                             f"got {lra_update_rule!r}")
        if lra_loss not in LOCAL_LOSSES:
            raise ValueError(f"unknown lra_loss {lra_loss!r}; choose one of {', '.join(LOCAL_LOSSES)}")
        if lra_error_std <= 0:
            raise ValueError(f"lra_error_std must be positive, got {lra_error_std}")
        if lra_error_factor <= 0:
            raise ValueError(f"lra_error_factor must be positive (1: seed 002 eq. (3) as printed and the "
                             f"authors' code; 2: eq. (5)), got {lra_error_factor}")
        if lra_output_error not in OUTPUT_ERRORS:
            raise ValueError(f"lra_output_error must be 'nll' (−y/z, seed 002 eq. (2)) or 'residual' (z − y, the "
                             f"authors' code), got {lra_output_error!r}")
        self.error_factor, self.output_error = lra_error_factor, lra_output_error
        self.beta, self.gamma, self.update_rule = lra_beta, lra_gamma, lra_update_rule
        self.local_loss = LOCAL_LOSSES[lra_loss]
        self.layers = [block.layer for block in model.blocks] + [model.output.layer]
        self.nonlinearities = [block.activation for block in model.blocks] + [nn.Softmax(dim=1)]
        # E^ℓ maps layer ℓ's error units to layer ℓ − 1: shape (size of ℓ − 1, size of ℓ) = W^ℓᵀ's.
        generator = torch.Generator().manual_seed(seed)
        self.error_weights = nn.ParameterList(
            nn.Parameter(torch.randn(layer.in_features, layer.out_features, generator=generator) * lra_error_std,
                         requires_grad=False)
            for layer in self.layers[1:])
        self.error_weights.to(device=self.device, dtype=self.layers[0].weight.dtype)
        self.optimizer = self.make_optimizer(model.parameters())
        self.error_optimizer = torch.optim.SGD(self.error_weights.parameters(), lr=lr)

    def trainable_modules(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, "error_weights": self.error_weights})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, self.error_optimizer]

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        state = self.compute_targets(x, y)
        for parameter, update in self.compute_updates(state).items():
            parameter.grad = update.to(parameter.dtype)
        for optimizer in self.optimizers():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        logits = state.pre_activations[-1]
        output_loss = F.cross_entropy(logits, y)
        metrics = {f"loss/block{index}": self.local_loss.value(target, z).mean()
                   for index, (target, z) in enumerate(zip(state.targets[:-1], state.post_activations[:-1]))}
        return {"loss": output_loss, "loss/output": output_loss, **metrics,
                "train_error": self.model.task.error(logits, x, y)}

    @torch.no_grad()
    def compute_targets(self, x: Tensor, y: Tensor) -> Representations:
        """Algorithm 1: the forward pass (eq. (1)), then targets and error units from the
        output down (eqs. (2)–(5)), in float32 (float64 for a float64 network) under autocast too."""
        inputs, pre, post = [], [], []
        z = x.flatten(1)
        with self.autocast():
            for layer, activation in zip(self.layers, self.nonlinearities):
                inputs.append(z)
                h = layer(z)
                z = activation(h)
                pre.append(h)
                post.append(z)
        inputs, pre, post = ([at_least_float32(t) for t in ts] for ts in (inputs, pre, post))
        target = F.one_hot(y, self.model.num_classes).to(post[-1].dtype)
        error = -target / post[-1] if self.output_error == "nll" else post[-1] - target  # eq. (2) / the code
        targets, errors = [target], [error]
        for index in range(len(self.layers) - 2, -1, -1):
            shift = error @ self.error_weights[index].T  # Δh^{ℓ−1} = E^ℓ e^ℓ, eq. (5)
            target = self.nonlinearities[index](pre[index] - self.beta * shift)
            # eqs. (3)–(5): the local losses' errors carry κ = 2; rescaled to κ = error_factor.
            error = (self.error_factor / 2) * self.local_loss.error(target, post[index])
            targets.insert(0, target)
            errors.insert(0, error)
        return Representations(inputs, pre, post, targets, errors)

    def compute_updates(self, state: Representations) -> dict[nn.Parameter, Tensor]:
        """Algorithm 2: ΔW, Δc of every layer and ΔE of every error weight, batch means.
        At the output both rules use the softmax's Jacobian applied to eᴸ = −y/zᴸ,
        zᴸ ⊙ (eᴸ − ⟨zᴸ, eᴸ⟩) = zᴸ − y, computed in that form (no 0·∞ when a
        probability underflows); with ``lra_output_error = "residual"`` that is eᴸ itself."""
        updates: dict[nn.Parameter, Tensor] = {}
        batch = state.inputs[0].shape[0]
        output = len(self.layers) - 1
        for index, (layer, activation) in enumerate(zip(self.layers, self.nonlinearities)):
            if index == output:
                delta = state.post_activations[index] - state.targets[index]
            elif self.update_rule == 1:
                delta = _times_derivative(activation, state.pre_activations[index], state.errors[index])
            else:
                delta = state.errors[index]
            weight_update = delta.T @ state.inputs[index] / batch  # eqs. (6)/(7)
            updates[layer.weight] = weight_update
            if layer.bias is not None:
                updates[layer.bias] = delta.mean(dim=0)
            if index > 0 and self.gamma > 0:
                updates[self.error_weights[index - 1]] = self.gamma * weight_update.T  # E tracks Wᵀ
        return updates


def _times_derivative(activation: nn.Module, pre_activation: Tensor, error: Tensor) -> Tensor:
    """e ⊗ φ'(h) for an element-wise φ, by autograd so that any activation works."""
    with torch.enable_grad():
        _, pullback = torch.func.vjp(activation, pre_activation)
        return pullback(error)[0]



RULES = {"lra-e": LocalRepresentationAlignment}
