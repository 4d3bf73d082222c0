"""``locallearn train`` with LRA-E changed in the two ways its authors' code departs from
the rule that are not options of it (github.com/AnkurMali/LRA-E, fmnist/fmnist.py):

- ``frozen-biases``: the biases never change (the code computes no bias updates);
- ``untransposed``: the square hidden-to-hidden error weights move by γΔW instead of
  γΔWᵀ (the code's ``E3`` receives ``dW3``, whose transpose its ``W3`` receives); the
  output layer's error weights still move by γΔWᵀ, as the code's ``E4`` does.

docs/RESULTS.md's LRA-E screen runs

    python tools/lra_code_variants.py frozen-biases --config configs/seed002-fashion-mnist-lra-e.toml \\
        --depth 8 --epochs 20 --seed 0 --run-dir runs/lra8-frozen-biases
"""

from __future__ import annotations

import sys

from locallearn.cli import main
from locallearn.rules.lra import LocalRepresentationAlignment

VARIANTS = ("frozen-biases", "untransposed")
RULE_UPDATES = LocalRepresentationAlignment.compute_updates


def code_updates(rule: LocalRepresentationAlignment, state, variants: set[str]) -> dict:
    """The rule's updates for ``state`` (its Algorithm 2), changed by ``variants`` (a subset of VARIANTS)."""
    updates = RULE_UPDATES(rule, state)
    output = len(rule.layers) - 1
    for index, layer in enumerate(rule.layers):
        if "frozen-biases" in variants and layer.bias is not None:
            updates.pop(layer.bias)
        if "untransposed" in variants and 0 < index < output:
            error_weight = rule.error_weights[index - 1]
            updates[error_weight] = updates[error_weight].T.contiguous()
    return updates


def apply(variants: set[str]) -> None:
    """Make every LRA-E rule of this process update as :func:`code_updates` with ``variants``."""
    unknown = variants - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    LocalRepresentationAlignment.compute_updates = lambda rule, state: code_updates(rule, state, variants)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    apply(set(sys.argv[1].split(",")))
    sys.exit(main(["train", *sys.argv[2:]]))
