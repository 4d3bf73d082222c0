"""Every rule trains with the command line's defaults: `locallearn train --rule RULE
--data digits --epochs 10` (the default model, seed 004's 3×1024 MLP; batch norm,
nonlinearity, batch size, optimiser, rates and initialisation as the CLI resolves them
for the rule) ends below 20 % test error (issue 14).

The bar catches defaults that do not train at all (a rule left at chance, a diverging
rate); it is not a measure of how well the hidden layers learn: an MLP whose hidden
layers stay random reaches about 5 % on digits (tests/test_rules.py), and every rule's
own tests hold it to that.

eqprop's default network is Scellier & Bengio's first, one hidden layer settling 20 free
and 4 weakly clamped steps: with the 3-hidden-layer net and its 500 steps the 90 Adam steps
of ten epochs stayed at chance (70.7 % at 5e-4, 90 % after 2 epochs at 5e-3) and took 19
minutes; the one-layer net reaches 3 % in 13 s.
"""

import json

import pytest

from locallearn import cli
from locallearn.rules import RULE_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")

BAR = 0.20


def last_epoch(run_dir) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [record for record in records if record["kind"] == "epoch"]
    assert epochs, "no epoch was recorded"
    return epochs[-1]


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_cli_defaults_learn_digits(rule, tmp_path):
    run_dir = tmp_path / "run"
    status = cli.main(["train", "--rule", rule, "--data", "digits", "--epochs", "10", "--run-dir", str(run_dir),
                       "--no-progress"])
    assert status == 0
    record = last_epoch(run_dir)
    assert record["epoch"] == 10
    assert record["test_error"] < BAR, f"{rule}: test error {record['test_error']:.3f} after 10 epochs"
