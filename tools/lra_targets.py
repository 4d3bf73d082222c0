"""How far LRA-E moves each hidden layer's target from its activity (seed 002 eq. (5)).

For one batch, prints per hidden layer, top down, the mean |yˡ − zˡ| and the share of
targets saturated (|yˡ| > 0.99): either at initialisation, for a recipe at several depths
and error-unit factors κ (``--lra-error-factor``), or in a trained run (``--run-dir``),
split into the test images the net classifies correctly and those it does not; for a trained
run also how far each error weight Eˡ has moved from its initial draw, ‖Eˡ − Eˡ₀‖ / ‖Eˡ₀‖, and
its cosine with Wˡᵀ, the matrix eq. (5)'s targets need it to carry the error like.

    python tools/lra_targets.py --config configs/seed002-fashion-mnist-lra-e.toml --depths 3 5 8 --factors 2 1
    python tools/lra_targets.py --run-dir results/seed002-table2/lra-e/5-layers/seed-0
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from locallearn.engine.run import build_parts, load_trained, settings_from_toml


def displacements(rule, x: torch.Tensor, y: torch.Tensor,
                  mask: torch.Tensor | None = None) -> list[tuple[float, float]]:
    """(mean |yˡ − zˡ|, share of |yˡ| > 0.99) of every hidden layer, top down, over the rows in ``mask``."""
    state = rule.compute_targets(x, y)
    rows = []
    for target, z in zip(state.targets[:-1], state.post_activations[:-1]):
        if mask is not None:
            target, z = target[mask], z[mask]
        rows.append(((target - z).abs().mean().item(), (target.abs() > 0.99).float().mean().item()))
    return rows[::-1]


def describe(rows: list[tuple[float, float]]) -> str:
    return "; ".join(f"|y−z| {distance:.3f} sat {saturated:.2f}" for distance, saturated in rows)


def at_initialisation(config: str, depths: list[int], factors: list[float], seed: int) -> None:
    base = settings_from_toml(config)
    for depth in depths:
        for factor in factors:
            settings = dataclasses.replace(base, depth=depth, seed=seed, lra_error_factor=factor).resolved()
            parts = build_parts(settings)
            x, y = next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(seed))))
            print(f"depth {depth}, κ {factor:g}, top down: " + describe(displacements(parts.rule, x, y)))


def error_weight_alignment(initial, trained) -> list[tuple[float, float]]:
    """(‖E − E₀‖ / ‖E₀‖, cos(E, Wᵀ)) of every error weight, bottom up, from two LRA-E rules built
    with the same settings: ``initial`` as drawn, ``trained`` after training."""
    rows = []
    for start, now, layer in zip(initial.error_weights, trained.error_weights, trained.layers[1:]):
        transposed = layer.weight.detach().T
        cosine = (now * transposed).sum() / (now.norm() * transposed.norm())
        rows.append(((now - start).norm().item() / start.norm().item(), cosine.item()))
    return rows


def trained(run_dir: str) -> None:
    settings, parts, epoch = load_trained(run_dir)
    x, y = next(iter(parts.test_loader.epoch()))
    with torch.no_grad():
        correct = parts.rule.model(x).argmax(dim=1) == y
    print(f"{run_dir}, epoch {epoch}, first test batch ({int(correct.sum())} of {len(y)} correct), top down:")
    for name, mask in (("correct", correct), ("wrong", ~correct)):
        print(f"  {name}: " + describe(displacements(parts.rule, x, y, mask)))
    alignment = error_weight_alignment(build_parts(settings).rule, parts.rule)
    print("error weights, bottom up: " + "; ".join(f"E{index} moved {moved:.3f}, cos(E, Wᵀ) {cosine:.3f}"
                                                     for index, (moved, cosine) in enumerate(alignment, start=2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="an lra-e recipe, measured at initialisation")
    parser.add_argument("--depths", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 1.0], help="values of κ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", help="a trained lra-e run, measured at its last checkpoint")
    args = parser.parse_args()
    if (args.config is None) == (args.run_dir is None):
        parser.error("give one of --config and --run-dir")
    torch.set_num_threads(1)
    if args.config:
        at_initialisation(args.config, args.depths, args.factors, args.seed)
    else:
        trained(args.run_dir)


if __name__ == "__main__":
    main()
