"""tools/lra_code_variants.py, behind docs/RESULTS.md's LRA-E screen: frozen biases get no
update; untransposed hidden error weights move by γΔW where the rule's move by γΔWᵀ; the
rest of the rule's updates are unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import lra_code_variants  # noqa: E402

from locallearn.models import build_model  # noqa: E402
from locallearn.rules.lra import LocalRepresentationAlignment  # noqa: E402


def rule_and_state():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, depth=3, width=16, activation="tanh", batch_norm=False)
    rule = LocalRepresentationAlignment(model, lr=0.01, optimizer="sgd")
    return rule, rule.compute_targets(torch.rand(5, 1, 8, 8), torch.arange(5))


def test_variants_change_only_what_they_name():
    rule, state = rule_and_state()
    reference = lra_code_variants.code_updates(rule, state, set())
    frozen = lra_code_variants.code_updates(rule, state, {"frozen-biases"})
    untransposed = lra_code_variants.code_updates(rule, state, {"untransposed"})
    biases = {layer.bias for layer in rule.layers}
    square = {rule.error_weights[0], rule.error_weights[1]}  # hidden 16 → 16; error_weights[2] is the output's
    assert set(frozen) == set(reference) - biases
    for parameter, update in reference.items():
        if parameter not in biases:
            torch.testing.assert_close(frozen[parameter], update, rtol=0, atol=0)
        expected = update.T if parameter in square else update
        torch.testing.assert_close(untransposed[parameter], expected, rtol=0, atol=0)
        if parameter in square:
            assert not torch.allclose(update, update.T)


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit, match="unknown variant"):
        lra_code_variants.apply({"frozen-bias"})
    assert LocalRepresentationAlignment.compute_updates is lra_code_variants.RULE_UPDATES
