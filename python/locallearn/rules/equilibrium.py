"""Equilibrium Propagation (Scellier & Bengio 2017, "Equilibrium Propagation: Bridging
the Gap between Energy-Based Models and Backpropagation"), seed 002's Equil-Prop baseline.

The MLP's layers become a layered continuous Hopfield network (§2): the input x is
clamped, every hidden and output unit is a free state sᵢ, and the states settle to a
minimum of the energy (§2, eq. (1), restricted to layered connections)

    E(s) = ½ Σᵢ ‖sᵢ‖² − Σᵢ ρ(sᵢ)ᵀ Wᵢ ρ(sᵢ₋₁) − Σᵢ bᵢᵀ ρ(sᵢ),   s₀ = x,

with ρ the hard sigmoid clip(s, 0, 1) (§5, the paper's choice) and Wᵢ, bᵢ the Network's
own ``nn.Linear`` weights and biases. The cost is C = ½‖s_out − y‖² with y one-hot, and
the total energy F = E + βC (§2). Both phases integrate ds/dt = −∂F/∂s with Euler steps
of size ε, clipping the states to [0, 1] after each step as the authors' code does (§5):
in that box ρ(s) = s and ρ' = 1, so each step is

    sᵢ ← clip(sᵢ − ε (sᵢ − Wᵢ ρ(sᵢ₋₁) − bᵢ − Wᵢ₊₁ᵀ ρ(sᵢ₊₁) [+ β (sᵢ − y) at the output]), 0, 1),

projected gradient descent on F, vectorised over the batch, all layers at once. The
free phase (β = 0) settles for ``eqprop_free_steps``; the weakly clamped phase starts
at the free fixed point s⁰ and settles F for ``eqprop_weak_steps`` to s^β. The update is
the contrastive local rule (§2–§3: ∂J/∂θ = lim_{β→0} (1/β)(∂F/∂θ(s^β) − ∂F/∂θ(s⁰)), with
J the cost at the free fixed point), averaged over the batch:

    ΔWᵢ ∝ (1/β)(ρ(sᵢ^β) ρ(sᵢ₋₁^β)ᵀ − ρ(sᵢ⁰) ρ(sᵢ₋₁⁰)ᵀ),   Δbᵢ ∝ (1/β)(ρ(sᵢ^β) − ρ(sᵢ⁰)).

−ΔW, the estimate of ∂J/∂W, goes to the optimiser as ``.grad``. With ``eqprop_random_sign``
the sign of β is drawn at random for each batch, as in §5 and the authors' code (it
cancels the estimate's first-order bias on average; the paper reports a regularising effect).

Our choices, not the paper's: the standardised input enters as x, not ρ(x) (the paper's
pixels lie in [0, 1], where ρ(x) = x); the free phase starts from the clipped
feed-forward pass ρ(Wᵢ sᵢ₋₁ + bᵢ) rather than from per-example persistent states, which
the trainer's stateless batches cannot hold; one optimiser at the rule's rate instead of
the paper's per-layer rates; the blocks' own nonlinearity is not used (ρ replaces it).
Under ``amp`` the dynamics still run in the parameters' precision.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.models import Network
from locallearn.rules.base import Rule, require_plain_mlp


def hard_sigmoid(s: Tensor) -> Tensor:
    """ρ(s) = clip(s, 0, 1), Scellier & Bengio 2017 §5."""
    return s.clamp(0.0, 1.0)


def host_coin_flip(generator: torch.Generator) -> bool:
    """A fair coin from a CPU generator: drawn on the host, it never waits for the device."""
    return torch.randint(2, (), generator=generator).item() == 1


# Free steps, weakly clamped steps and β for 1, 2 and 3 hidden layers: the authors' code
# (bscellier/Towards-a-Biologically-Plausible-Backprop, train_model.py: net1, net2, net3).
SETTLING_BY_DEPTH = {1: (20, 4, 0.5), 2: (150, 6, 1.0), 3: (500, 8, 1.0)}


def settling_defaults(hidden_layers: int) -> tuple[int, int, float]:
    """(free steps, weakly clamped steps, β) of Scellier & Bengio's network of that depth;
    deeper networks take their 3-hidden-layer settings."""
    return SETTLING_BY_DEPTH[min(max(hidden_layers, 1), 3)]


class EquilibriumPropagation(Rule):
    """Equilibrium Propagation on an MLP without batch norm or dropout (see the module docstring).

    ``predict`` returns the output states after the free phase, in [0, 1], as the
    "logits": only their argmax is meaningful."""

    name = "eqprop"

    def __init__(self, model: Network, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0,
                 amp: bool = False, seed: int = 0, eqprop_beta: float | None = None,
                 eqprop_free_steps: int | None = None, eqprop_weak_steps: int | None = None,
                 eqprop_step_size: float = 0.5, eqprop_random_sign: bool = True) -> None:
        super().__init__(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay, amp=amp)
        require_plain_mlp(model, "eqprop", "a layered Hopfield network, Scellier & Bengio 2017 eq. (1)")
        free_steps, weak_steps, beta = settling_defaults(len(model.blocks))
        eqprop_free_steps = free_steps if eqprop_free_steps is None else eqprop_free_steps
        eqprop_weak_steps = weak_steps if eqprop_weak_steps is None else eqprop_weak_steps
        eqprop_beta = beta if eqprop_beta is None else eqprop_beta
        if not eqprop_beta > 0:
            raise ValueError(f"eqprop_beta must be positive (Scellier & Bengio use 0.5 or 1.0; "
                             f"eqprop_random_sign=True flips its sign), got {eqprop_beta}")
        for option, value in (("eqprop_free_steps", eqprop_free_steps), ("eqprop_weak_steps", eqprop_weak_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive integer, got {value!r}")
        if not 0 < eqprop_step_size <= 1:
            raise ValueError(f"eqprop_step_size (ε) must be in (0, 1] (the paper uses 0.5; beyond 1 the "
                             f"leak term overshoots), got {eqprop_step_size}")
        if not isinstance(eqprop_random_sign, bool):
            raise ValueError(f"eqprop_random_sign must be true or false, got {eqprop_random_sign!r}")
        self.beta, self.free_steps, self.weak_steps = eqprop_beta, eqprop_free_steps, eqprop_weak_steps
        self.step_size, self.random_sign = eqprop_step_size, eqprop_random_sign
        self.layers: list[nn.Linear] = [block.layer for block in model.blocks] + [model.output.layer]
        self.sign_generator = torch.Generator().manual_seed(seed)
        self.optimizer = self.make_optimizer(model.parameters())

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    # ------------------------------------------------------------------ energy and dynamics

    def energy(self, x: Tensor, states: list[Tensor]) -> Tensor:
        """E(s) of §2, eq. (1), one value per example (the clamped input's own terms left out)."""
        below = x.flatten(1)
        total = torch.zeros(below.shape[0], dtype=states[0].dtype, device=states[0].device)
        for layer, state in zip(self.layers, states):
            rho = hard_sigmoid(state)
            total = total + 0.5 * state.pow(2).sum(1) - (rho * layer(below)).sum(1)
            below = rho
        return total

    def cost(self, states: list[Tensor], y: Tensor) -> Tensor:
        """C = ½‖s_out − y‖² (§2), one value per example."""
        return 0.5 * (states[-1] - self._one_hot(y, states[-1])).pow(2).sum(1)

    @torch.no_grad()
    def settle(self, x: Tensor, states: list[Tensor], steps: int, beta: float = 0.0,
               y: Tensor | None = None) -> list[Tensor]:
        """``steps`` Euler steps of ds/dt = −∂F/∂s from ``states``, clipped to [0, 1] (§5);
        β = 0 is the free phase, β ≠ 0 (with labels ``y``) the weakly clamped phase."""
        x = x.flatten(1).to(states[0].dtype)
        target = None if beta == 0 else self._one_hot(y, states[-1])
        weights = [layer.weight for layer in self.layers]
        biases = [layer.bias for layer in self.layers]
        input_drive = F.linear(x, weights[0], biases[0])  # the clamped input's drive, the same every step
        for _ in range(steps):
            rhos = [hard_sigmoid(state) for state in states]
            updated = []
            for index, state in enumerate(states):
                drive = input_drive if index == 0 else F.linear(rhos[index - 1], weights[index], biases[index])
                if index + 1 < len(states):
                    drive = drive + rhos[index + 1] @ weights[index + 1]
                gradient = state - drive  # ∂E/∂sᵢ with ρ' = 1 inside the box
                if target is not None and index + 1 == len(states):
                    gradient = gradient + beta * (state - target)  # + β ∂C/∂s_out
                updated.append((state - self.step_size * gradient).clamp_(0.0, 1.0))
            states = updated
        return states

    @torch.no_grad()
    def free_phase(self, x: Tensor) -> list[Tensor]:
        """The free fixed point s⁰, settled from the clipped feed-forward pass (our choice)."""
        below = x.flatten(1).to(self.layers[0].weight.dtype)
        states = []
        for layer in self.layers:
            below = hard_sigmoid(layer(below))
            states.append(below)
        return self.settle(x, states, self.free_steps)

    @torch.no_grad()
    def gradient_estimates(self, x: Tensor, y: Tensor, beta: float
                           ) -> tuple[list[Tensor], list[Tensor], dict[nn.Parameter, Tensor]]:
        """Free and weakly clamped states and, for every Wᵢ and bᵢ, the EqProp estimate of
        ∂J/∂θ = (1/β)(∂F/∂θ(s^β) − ∂F/∂θ(s⁰)) (§3), with ∂F/∂Wᵢ = −ρ(sᵢ)ρ(sᵢ₋₁)ᵀ and
        ∂F/∂bᵢ = −ρ(sᵢ), batch means. Its negative is the update ΔW of the module docstring."""
        free = self.free_phase(x)
        weak = self.settle(x, free, self.weak_steps, beta, y)
        inputs = x.flatten(1).to(free[0].dtype)
        estimates: dict[nn.Parameter, Tensor] = {}
        batch = inputs.shape[0]
        for index, layer in enumerate(self.layers):
            rho_free, rho_weak = hard_sigmoid(free[index]), hard_sigmoid(weak[index])
            below_free = inputs if index == 0 else hard_sigmoid(free[index - 1])
            below_weak = inputs if index == 0 else hard_sigmoid(weak[index - 1])
            estimates[layer.weight] = -(rho_weak.T @ below_weak - rho_free.T @ below_free) / (beta * batch)
            if layer.bias is not None:
                estimates[layer.bias] = -(rho_weak - rho_free).mean(0) / beta
        return free, weak, estimates

    # ------------------------------------------------------------------ the Rule interface

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        beta = self.beta
        if self.random_sign and not host_coin_flip(self.sign_generator):
            beta = -beta
        free, _, estimates = self.gradient_estimates(x, y, beta)
        for parameter, estimate in estimates.items():
            parameter.grad = estimate.to(parameter.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        cost = self.cost(free, y).mean()
        return {"loss": cost, "loss/output": cost, "energy": self.energy(x, free).mean(),
                "train_error": self.model.task.error(free[-1], x, y)}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The output states after the free phase (in [0, 1]; only the argmax is meaningful)."""
        self.model.eval()
        return self.free_phase(x)[-1].float()

    @torch.no_grad()
    def activations(self, x: Tensor) -> list[Tensor]:
        """The states of every hidden layer, then the output, after the free phase."""
        self.model.eval()
        return [state.float() for state in self.free_phase(x)]

    def state_dict(self) -> dict:
        """The base class's state and the generator of β's sign, so a resumed run draws the same signs."""
        return {**super().state_dict(), "sign_generator": self.sign_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "sign_generator" not in state:
            raise ValueError("the state has no 'sign_generator': it was not saved by an eqprop rule")
        super().load_state_dict(state)
        self.sign_generator.set_state(state["sign_generator"])

    def _one_hot(self, y: Tensor, like: Tensor) -> Tensor:
        return F.one_hot(y, self.model.num_classes).to(like.dtype)



RULES = {"eqprop": EquilibriumPropagation}
