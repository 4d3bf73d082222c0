"""The `locallearn` command line."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import frozen_hidden_test_error

from locallearn import _native, cli, demo, engine, info


def test_info_reports_versions_extension_and_ops(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out
    assert ("built for" in out) == (_native.extension is not None)
    implementations = info.op_implementations()
    for op, by_device in implementations.items():
        assert op in out
        assert by_device["cpu"] == ("native" if "cpu" in _native.built_devices else "reference")
        assert by_device["cuda"] == ("native" if "cuda" in _native.built_devices else "reference")


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "locallearn.cli", "info"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "similarity_matching_loss" in result.stdout


def test_demo_trains_both_rules_and_reports_what_their_runs_measured(tmp_path, capsys):
    """On digits, 10 epochs of a 3 × 64 MLP (about 110 steps): both rules learn (measured:
    backprop 11.5 %, predsim 16.1 % test error; the network with its hidden blocks frozen
    69.6 %), and the printed table gives each run's own last test error, as metrics.jsonl
    holds it."""
    argv = ["demo", "--data", "digits", "--epochs", "10", "--width", "64", "--runs-dir", str(tmp_path),
            "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    settings = {key.replace("-", "_"): value for key, value in demo.DEMO_SETTINGS.items() if key != "train-subset"}
    assert 0.3 < frozen_hidden_test_error(engine.TrainSettings(**{
        **settings, "rule": "backprop", "data": "digits", "epochs": 10, "width": 64,
        "run_dir": str(tmp_path / "frozen")})) - 0.03
    for rule in demo.DEMO_RULES:
        (run_dir,) = tmp_path.glob(f"demo-*/{rule}")
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        last = [record for record in engine.read_metrics(run_dir) if record["kind"] == "epoch"][-1]
        assert last["epoch"] == 10 and last["test_error"] < 0.3, (rule, last["test_error"])
        (row,) = [line for line in out.splitlines() if line.startswith(f"{rule} ")]
        assert row.split()[1] == f"{100 * last['test_error']:.2f}%", row


def test_demo_falls_back_to_digits_without_the_dataset(tmp_path):
    settings, note = demo.resolve_data({**demo.DEMO_SETTINGS, "data": "mnist", "data-dir": str(tmp_path)})
    assert settings["data"] == "digits" and "train-subset" not in settings
    assert "mnist not found" in note


def test_shipped_demo_config_is_the_embedded_default():
    config_path = Path(__file__).parents[1] / "configs" / "demo.toml"
    from_file = cli.parse_args(["demo", "--config", str(config_path)])
    embedded = cli.parse_args(["demo"])
    assert _settings(from_file) == _settings(embedded)
    for key, value in demo.DEMO_SETTINGS.items():
        assert getattr(embedded, key.replace("-", "_")) == value, key


def _settings(args) -> dict:
    return {key: value for key, value in vars(args).items() if key not in ("config", "command_parser")}


def test_config_sets_defaults_and_flags_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epochs = 7\nbatch-size = 32\n")
    args = cli.parse_args(["train", "--config", str(path), "--epochs", "9"])
    assert (args.epochs, args.batch_size) == (9, 32)


def test_config_with_unknown_key_is_rejected(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("epochz = 7\n")
    with pytest.raises(SystemExit):
        cli.parse_args(["train", "--config", str(path)])
    assert "epochz" in capsys.readouterr().err


def test_missing_config_file_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["demo", "--config", str(tmp_path / "absent.toml")])
    assert "absent.toml" in capsys.readouterr().err


@pytest.mark.parametrize("config_path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")),
                         ids=lambda path: path.name)
def test_every_shipped_config_is_valid(config_path):
    """Each recipe parses, names a registered rule and builds its model and rule."""
    command = "demo" if config_path.name == "demo.toml" else "train"
    build_from_command_line([command, "--config", str(config_path)])


@pytest.mark.parametrize("recipe, baseline", [
    ("seed001-fashion-mnist-al-mlp.toml", "mlp-seed001-matched"),
    ("seed001-fashion-mnist-al-cnn.toml", "cnn-seed001-matched"),
    ("seed001-cifar10-al-resnet20.toml", "resnet20-matched"),
    ("seed001-cifar10-al-resnet32.toml", "resnet32-matched"),
])
def test_seed001_recipes_run_their_backprop_baseline_as_their_comments_say(recipe, baseline):
    path = Path(__file__).parents[1] / "configs" / recipe
    assert "--rule backprop" in path.read_text() and baseline in path.read_text()
    build_from_command_line(["train", "--config", str(path), "--rule", "backprop", "--model", baseline])


def test_a_recipe_option_applies_to_the_rules_that_take_it(capsys):
    """seed 004's VGG8B recipe sets the pred head's input width: predsim takes it, backprop
    runs from the same recipe without it, and as a flag backprop still refuses it."""
    recipe = str(Path(__file__).parents[1] / "configs" / "vgg8b-fashion-mnist.toml")
    assert cli.parse_args(["train", "--config", recipe]).dim_in_decoder == 1024
    capsys.readouterr()
    backprop = cli.parse_args(["train", "--config", recipe, "--rule", "backprop"])
    assert backprop.dim_in_decoder is None
    assert "sets dim-in-decoder, which rule 'backprop' does not take; left out" in capsys.readouterr().err
    build_from_command_line(["train", "--config", recipe, "--rule", "backprop"])
    flagged = cli.parse_args(["train", "--config", recipe, "--rule", "backprop", "--dim-in-decoder", "512"])
    assert flagged.dim_in_decoder == 512  # kept, so that build_rule refuses it by name
    with pytest.raises(ValueError, match="rule 'backprop' has no option dim_in_decoder"):
        build_from_command_line(["train", "--config", recipe, "--rule", "backprop", "--dim-in-decoder", "512"])


def build_from_command_line(argv: list[str]) -> None:
    """Parse a command line and build its model and rule as `locallearn train` would (on a
    1×28×28 input, which every recipe's model accepts)."""
    from locallearn.engine.run import RULE_OPTIONS, TrainSettings
    from locallearn.models import build_model
    from locallearn.rules import RULE_NAMES, build_rule

    args = cli.parse_args(argv)
    rule = getattr(args, "rule", "predsim")
    assert rule in RULE_NAMES
    settings = TrainSettings(rule=rule, **{name: getattr(args, name) for name in cli._setting_names(cli.DEMO_FIXED)})
    settings = settings.resolved()
    with torch.device("meta"):  # the matched baselines hold up to 27M parameters
        model = build_model(settings.model, (1, 28, 28), 10, depth=settings.depth, width=settings.width,
                            batch_norm=settings.batch_norm, activation=settings.activation)
    options = {name: getattr(settings, name) for name in RULE_OPTIONS if getattr(settings, name) is not None}
    build_rule(rule, model, lr=settings.lr, optimizer=settings.optimizer, **options)


def test_every_rule_option_is_a_train_setting():
    from locallearn.engine.run import RULE_OPTIONS, settings_fields

    assert set(RULE_OPTIONS) <= {item.name for item in settings_fields()}


@pytest.mark.parametrize("arguments, message", [
    (["--data", "fashion-mnist", "--data-dir", "{tmp}/nothing"], r"the data directory .*/nothing given for "
                                                                 r"fashion-mnist is not a directory"),
    (["--data", "fashion-mnist", "--data-dir", "{tmp}"], r"fashion-mnist"),  # a folder without its files
    (["--data", "digits", "--device", "gpu"], r"--device 'gpu': locallearn trains on 'cpu', 'cuda' or 'cuda:N'"),
    (["--data", "digits", "--device", "cuda:7"], r"device 'cuda(:7)?' requested but"),
    (["--resume", "{tmp}"], r"is not a run directory: it has no config.toml"),
])
def test_train_refuses_bad_input_with_a_message_and_no_run(tmp_path, capsys, arguments, message):
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    run_dir = tmp_path / "run"
    extra = [] if "--resume" in arguments else ["--epochs", "1", "--no-progress", "--run-dir", str(run_dir)]
    assert cli.main(["train", *arguments, *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not run_dir.exists()
