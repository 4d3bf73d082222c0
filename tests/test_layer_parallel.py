"""Layer-parallel training (--layer-parallel K, locallearn.engine.pipeline) on the CPU with
gloo: the stage split, the refusals, and two stages under torchrun, waiting for every send
(--sync) and not, against one process: the same weights, optimiser state and metrics,
because a stage's input for batch t is computed by the weights before batch t in both
(the module's docstring); a killed stage stops its neighbour with a message naming it."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import frozen_hidden_test_error, load_benchmark
from locallearn import config, engine
from locallearn.engine import pipeline
from locallearn.engine.run import TrainSettings, build_parts, build_trainer, load_trained
from locallearn.engine.distributed import World
from locallearn.engine.schedule import scale_learning_rates
from locallearn.engine.trainer import _epoch_generator

TIMING_FIELDS = ("images_per_s", "train_seconds", "peak_memory_mb")
RECIPE = {"rule": "predsim", "data": "digits", "model": "mlp", "depth": 3, "width": 64, "epochs": 3,
          "batch-size": 32, "lr": 2e-3, "dropout": 0.0, "augment": False, "device": "cpu", "log-every": 10, "seed": 3}
"""predsim with batch norm and Adam; no dropout (each process draws its own masks)."""


def recipe_settings(**changes) -> TrainSettings:
    """RECIPE's settings with ``changes`` (TrainSettings' field names), unresolved."""
    return TrainSettings(**{**{key.replace("-", "_"): value for key, value in RECIPE.items()}, **changes})


# ------------------------------------------------------------------ the split


@pytest.mark.parametrize("costs, stages, expected", [
    ([1, 1, 1, 1], 2, [(0, 2), (2, 4)]),
    ([5, 1, 1, 1, 1, 1], 2, [(0, 1), (1, 6)]),
    ([1, 1, 1, 1, 1, 5], 2, [(0, 5), (5, 6)]),
    ([1, 2, 6, 2, 1], 3, [(0, 2), (2, 3), (3, 5)]),  # the 6 alone: the only split whose largest stage is 6
    ([2, 7], 1, [(0, 2)]),
])
def test_split_evenly_minimises_the_largest_stage(costs, stages, expected):
    assert [(r.start, r.stop) for r in pipeline.split_evenly(costs, stages)] == expected


def test_split_evenly_is_optimal_against_every_contiguous_split():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        costs = torch.rand(7, generator=generator).tolist()
        ranges = pipeline.split_evenly(costs, 3)
        best = min(max(sum(costs[:i]), sum(costs[i:j]), sum(costs[j:])) for i in range(1, 6) for j in range(i + 1, 7))
        assert max(sum(costs[r.start:r.stop]) for r in ranges) == pytest.approx(best)
        assert [r.start for r in ranges] == [0, ranges[0].stop, ranges[1].stop] and ranges[-1].stop == 7


def test_bad_splits_are_refused():
    with pytest.raises(ValueError, match="cannot split 2 blocks into 3 stages"):
        pipeline.split_evenly([1, 1], 3)
    with pytest.raises(ValueError, match="4 blocks in all"):
        pipeline.split_by_counts([1, 2], 4)
    with pytest.raises(ValueError, match="at least one block"):
        pipeline.split_by_counts([0, 4], 4)
    assert pipeline.split_by_counts([1, 3], 4) == [range(0, 1), range(1, 4)]


def test_measuring_the_blocks_leaves_the_rule_as_it_was():
    settings = recipe_settings().resolved()
    parts = build_parts(settings)
    rule = parts.rule
    x, y = next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(0))))
    before = {key: value.clone() for key, value in rule.trainable_modules().state_dict().items()}
    rng = torch.get_rng_state()
    optimizers = [copy.deepcopy(optimizer.state_dict()) for optimizer in rule.optimizers()]
    seconds = pipeline.measure_unit_seconds(rule, x, y)
    assert len(seconds) == 3 and all(value > 0 for value in seconds)
    after = rule.trainable_modules().state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # batch-norm statistics too
    assert all(p.grad is None for p in rule.trainable_modules().parameters())
    assert [optimizer.state_dict() for optimizer in rule.optimizers()] == optimizers  # no Adam state yet
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("rule", ["predsim", "dfa", "al"])
def test_the_metric_names_are_the_keys_of_a_last_stage(rule):
    settings = recipe_settings(rule=rule).resolved()
    parts = build_parts(settings)
    x, y = next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(0))))
    units = range(len(parts.rule.stage_units()))
    assert list(parts.rule.train_last_stage((x,), y, units, {})) == parts.rule.stage_metric_names()
    assert set(parts.rule.stage_metric_names()) <= set(parts.rule.train_step(x, y))


@pytest.mark.parametrize("rule, sync, delays", [
    ("predsim", False, [0, 0, 0]), ("al", False, [0, 0, 0]), ("dfa", False, [2, 1, 0]), ("dfa", True, [0, 0, 0])])
def test_only_dfa_stages_learn_late_and_keep_their_weights(rule, sync, delays):
    """The error delay of each of 3 stages: K − 1 − s for DFA (whose earlier stages stash
    their weights for it), none with --sync, and none for rules that send nothing back."""
    parts = build_parts(recipe_settings(rule=rule).resolved())
    stages = [range(0, 1), range(1, 2), range(2, 3)]
    assert [pipeline.LayerPipeline(parts.rule, World(rank=rank, size=3), stages, sync=sync).error_delay
            for rank in range(3)] == delays


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("change, message", [
    ({"rule": "backprop"}, "'backprop' cannot: its gradient crosses every stage boundary backward"),
    ({"rule": "dtp"}, "'dtp' cannot: each layer's target is computed from the layer above it"),
    ({"rule": "lra-e"}, "'lra-e' cannot: its targets are computed top-down"),
    ({"checkpoint_every": 5}, "does not combine with --checkpoint-every"),
    ({"compile": True}, "does not combine with --compile"),
    ({"stages": (1, 1, 1)}, "--stages gives 3 stages and --layer-parallel 2"),
])
def test_layer_parallel_refuses_what_it_cannot_run(change, message):
    settings = TrainSettings(**{"rule": "predsim", "layer_parallel": 2, **change})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings.resolved(World(rank=0, size=2))


def test_layer_parallel_needs_one_process_per_stage_and_its_switches_need_it():
    with pytest.raises(ValueError, match=r"needs 2 processes, one per stage .* this run has 4. Stages × data-parallel"):
        TrainSettings(layer_parallel=2).resolved(World(rank=0, size=4))
    with pytest.raises(ValueError, match="add --layer-parallel K"):
        TrainSettings(sync=True).resolved()
    with pytest.raises(ValueError, match="add --layer-parallel K"):
        TrainSettings(stages=(2, 1)).resolved()


def test_stages_that_do_not_cover_the_blocks_are_refused(tmp_path):
    settings = recipe_settings(layer_parallel=1, stages=(4,), run_dir=str(tmp_path / "run")).resolved()
    with pytest.raises(ValueError, match=r"--stages 4: .* 3 blocks in all \(the network has 3\)"):
        build_trainer(settings, progress=False)


def test_one_stage_is_a_single_process_run(tmp_path):
    def settings(name, **extra):
        return recipe_settings(epochs=1, **extra, run_dir=str(tmp_path / name)).resolved()

    build_trainer(settings("plain"), progress=False).fit()
    build_trainer(settings("one-stage", layer_parallel=1), progress=False).fit()
    assert_same_run(tmp_path / "plain", tmp_path / "one-stage")


# ------------------------------------------------------------------ two stages under torchrun


def torchrun(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_command(recipe: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["-m", "locallearn", "train", "--config", str(recipe), "--run-dir", str(run_dir), "--no-progress", *extra]


def train_runs(out: Path, recipe: dict, *async_split: str) -> Path:
    """``recipe`` trained by one process (one thread, as each torchrun process), then by two
    stages with --sync (split 2 + 1) and without (split measured, or ``async_split``), in ``out``."""
    out.mkdir()
    path = out / "recipe.toml"
    path.write_text(config.dump_toml(recipe), encoding="utf-8")
    single = [sys.executable, *train_command(path, out / "single")]
    completed = subprocess.run(single, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    torchrun(*train_command(path, out / "sync", "--layer-parallel", "2", "--stages", "2", "1", "--sync"))
    torchrun(*train_command(path, out / "async", "--layer-parallel", "2", *async_split))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """predsim's runs (:func:`train_runs`)."""
    return train_runs(tmp_path_factory.mktemp("layer-parallel") / "predsim", RECIPE)


@pytest.fixture(scope="module")
def al_runs(tmp_path_factory) -> Path:
    """AL's runs: 10 epochs at 3e-3, past the target autoencoders' initial plateau (tests/test_associated.py)."""
    return train_runs(tmp_path_factory.mktemp("layer-parallel") / "al", {**RECIPE, "rule": "al", "epochs": 10, "lr": 3e-3})


@pytest.fixture(scope="module")
def dfa_runs(tmp_path_factory) -> Path:
    return train_runs(tmp_path_factory.mktemp("layer-parallel") / "dfa", {**RECIPE, "rule": "dfa"},
                      "--stages", "2", "1")


def assert_same_run(expected: Path, actual: Path, unmeasured: tuple[str, ...] = ()) -> None:
    """The same weights, optimiser state and metrics (but ``unmeasured``, which ``actual`` lacks)."""
    mine, theirs = (engine.load_checkpoint(path / engine.CHECKPOINT_NAME)["rule"] for path in (expected, actual))
    assert_same_state(mine, theirs)
    records = [[{key: value for key, value in record.items() if key not in (*TIMING_FIELDS, *unmeasured)}
                for record in engine.read_metrics(path)] for path in (expected, actual)]
    assert len(records[0]) == len(records[1])
    for mine, theirs in zip(*records):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            # training metrics are the same sums; the test set is sharded over the stages, so its
            # loss and error are float32 sums over other groups of examples (float32 rounding)
            assert theirs[key] == (pytest.approx(value, rel=1e-6) if key.startswith("test_") else value), key


def assert_same_state(mine: dict, theirs: dict) -> None:
    """Two rule states (``Rule.state_dict()``) hold equal modules and optimiser state."""
    assert mine["modules"].keys() == theirs["modules"].keys()
    for key, value in mine["modules"].items():
        assert torch.equal(value, theirs["modules"][key]), key
    for index, (one, two) in enumerate(zip(mine["optimizers"], theirs["optimizers"], strict=True)):
        assert one["state"].keys() == two["state"].keys()
        for parameter, state in one["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(two["state"][parameter][name])), \
                    (index, parameter, name)


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_two_stages_give_the_single_process_weights_and_metrics_exactly(runs, schedule):
    assert_same_run(runs / "single", runs / schedule)
    settings = config.load_toml(runs / schedule / engine.CONFIG_NAME)
    assert settings["layer-parallel"] == 2 and settings["world-size"] == 2
    assert sorted(path.name for path in (runs / schedule).iterdir()) == sorted(
        path.name for path in (runs / "single").iterdir())


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_associated_learning_in_two_stages_is_the_single_process_run(al_runs, schedule):
    """(sᵢ, tᵢ) travel forward and nothing backward, so AL's updates are one process's; its
    training error (eq. (7) through every stage's decoder) is not measured."""
    assert_same_run(al_runs / "single", al_runs / schedule, unmeasured=("train_error",))
    assert all("train_error" not in record for record in engine.read_metrics(al_runs / schedule))


def test_dfa_waiting_for_each_error_is_the_single_process_run(dfa_runs):
    assert_same_run(dfa_runs / "single", dfa_runs / "sync")


def test_asynchronous_dfa_learns_from_errors_one_batch_late_at_the_weights_that_computed_them(dfa_runs, tmp_path):
    """Against a one-process simulation written here: stage 1 (blocks 0–1) learns from batch
    t's output error after its forward of batch t + 1, its gradient taken at a copy of its
    blocks as they computed batch t; stage 2 (block 2 and the output layer) as one process."""
    expected = simulate_delayed_dfa(recipe_settings(rule="dfa", run_dir=str(tmp_path / "simulated")).resolved(),
                                    stage_one=range(0, 2))
    saved = engine.load_checkpoint(dfa_runs / "async" / engine.CHECKPOINT_NAME)["rule"]["modules"]
    single = engine.load_checkpoint(dfa_runs / "single" / engine.CHECKPOINT_NAME)["rule"]["modules"]
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-5, atol=1e-6, msg=key)
    weight = "model.blocks.0.layer.weight"
    assert (saved[weight] - single[weight]).abs().max() > 100 * (saved[weight] - expected[weight]).abs().max()


def simulate_delayed_dfa(settings: TrainSettings, stage_one: range) -> dict[str, torch.Tensor]:
    """The modules' state after ``settings``' epochs of two-stage DFA with the error one batch
    late on ``stage_one`` (see the test above), on one thread."""
    trainer = build_trainer(settings, progress=False)
    rule, schedule = trainer.rule, trainer.schedule
    stage_two = range(stage_one.stop, len(rule.model.blocks))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epoch in range(schedule.epochs):
            scale_learning_rates(rule.optimizers(), schedule.lr_at(epoch) / schedule.lr)
            rule.trainable_modules().train()
            waiting = []
            for x, y in trainer.train_loader.epoch(_epoch_generator(schedule.seed, epoch)):
                blocks = copy.deepcopy([rule.model.blocks[index] for index in stage_one])  # as they compute batch t
                with torch.no_grad():
                    _, h = rule.forward_blocks(x, stage_one)
                errors = []
                rule.train_last_stage((h,), y, stage_two, {}, errors.append)
                waiting.append((blocks, x, errors[0]))
                if len(waiting) > 1:
                    learn_at_copies(rule, stage_one, *waiting.pop(0))
            for late in waiting:
                learn_at_copies(rule, stage_one, *late)
    finally:
        torch.set_num_threads(threads)
    return rule.trainable_modules().state_dict()


def learn_at_copies(rule, stage_one: range, blocks: list, x: torch.Tensor, error: torch.Tensor) -> None:
    """DFA's gradient of ``stage_one`` on ``x`` taken at the copies ``blocks``, stepped on the live blocks."""
    features, h_in = [], x
    for block in blocks:
        features.append(block.features(h_in))
        with torch.no_grad():
            h_in = block.emit(features[-1].detach())
    torch.autograd.backward(features, [rule.feedback(error, index).view_as(h) for index, h in zip(stage_one, features)])
    rule.optimizer.zero_grad(set_to_none=True)
    for block, copied in zip((rule.model.blocks[index] for index in stage_one), blocks):
        for parameter, copied_parameter in zip(block.parameters(), copied.parameters()):
            parameter.grad = copied_parameter.grad
    rule.optimizer.step()


def test_a_layer_parallel_run_loads_as_a_single_process_one(runs):
    """What `locallearn analyze` reads: one process rebuilds the whole trained network."""
    settings, parts, epochs = load_trained(runs / "async")
    assert settings.layer_parallel == 2 and epochs == RECIPE["epochs"]
    saved = engine.load_checkpoint(runs / "async" / engine.CHECKPOINT_NAME)["rule"]["modules"]
    for key, value in parts.rule.trainable_modules().state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("rule_runs", ["runs", "al_runs", "dfa_runs"])
def test_the_asynchronous_pipeline_learns_digits(rule_runs, request, tmp_path):
    """Below 10 % test error, within 2 points of one process, and below the same network with
    its hidden blocks frozen (measured: predsim 4.3 %, AL 6.3 %, both as one process; DFA
    7.4 % against 6.9 %; frozen 23.5 %, 18.5 %, 24.1 %)."""
    folder = request.getfixturevalue(rule_runs)
    single, pipelined = ([record for record in engine.read_metrics(folder / name) if record["kind"] == "epoch"][-1]
                         for name in ("single", "async"))
    assert pipelined["test_error"] < 0.1
    assert pipelined["test_error"] <= single["test_error"] + 0.02
    recipe = {key.replace("-", "_"): value for key, value in config.load_toml(folder / "recipe.toml").items()}
    assert 0.1 < frozen_hidden_test_error(recipe_settings(**{**recipe, "run_dir": str(tmp_path / "frozen")})) - 0.03


def killer_site(folder: Path, condition: str, calls: int) -> str:
    """A PYTHONPATH entry whose sitecustomize SIGKILLs the process where ``condition`` holds,
    at its ``calls``-th LocalLosses.train_blocks."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import os, signal\n"
        f"if {condition}:\n"
        "    from locallearn.rules import local_losses\n"
        "    train_blocks, calls = local_losses.LocalLosses.train_blocks, []\n"
        "    def train_then_die(self, *args):\n"
        "        calls.append(1)\n"
        f"        if len(calls) == {calls}:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        return train_blocks(self, *args)\n"
        "    local_losses.LocalLosses.train_blocks = train_then_die\n", encoding="utf-8")
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def test_a_stage_killed_in_epoch_two_is_restarted_and_resumes_from_epoch_one(runs, tmp_path):
    """torchrun --max-restarts 1 restarts both stages after stage 2 dies in epoch 2; they
    resume from the checkpoint of epoch 1 and end where the uninterrupted run ended."""
    pythonpath = killer_site(tmp_path / "site", "os.environ.get('RANK') == '1' and "
                                                "os.environ.get('TORCHELASTIC_RESTART_COUNT') == '0'", 50)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "1", *train_command(runs / "recipe.toml", tmp_path / "run", "--layer-parallel", "2")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "-9" in result.stderr or "SIGKILL" in result.stderr, result.stderr[-2000:]  # it did die
    assert_same_run(runs / "async", tmp_path / "run")


def test_a_killed_stage_stops_the_other_with_a_message_naming_it(tmp_path):
    """Two processes started by hand (no torchrun agent, which would stop the survivor
    itself): stage 2 is SIGKILLed at its 5th batch; stage 1's next send fails and it stops."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(config.dump_toml({**RECIPE, "log-every": 1000, "divergence-check-every": 1000}),
                      encoding="utf-8")
    pythonpath = killer_site(tmp_path / "site", "os.environ.get('RANK') == '1'", 5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for rank in (0, 1):
        environment = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                       "PYTHONPATH": pythonpath}
        processes.append(subprocess.Popen([sys.executable, *train_command(recipe, tmp_path / "run",
                                                                          "--layer-parallel", "2")],
                                          env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    _, survivor_errors = processes[0].communicate(timeout=300)
    processes[1].wait(timeout=60)
    assert processes[1].returncode == -signal.SIGKILL
    assert processes[0].returncode != 0
    assert "layer-parallel stage 1 (rank 0) lost stage 2 (rank 1)" in survivor_errors, survivor_errors[-3000:]


def test_the_benchmark_reports_the_split_and_what_crosses_it():
    """bench_layer_parallel's split report: AL's boundary sends s and t (batch 32 × 64 each,
    float32) and the float64 labels, metrics and their presence flags."""
    report = load_benchmark("bench_layer_parallel").split_report({**RECIPE, "rule": "al"}, 2)
    names = 1 + 2 * 3  # loss, 3 forward and 3 inverse losses
    assert len(report["block_ms"]) == 3 and report["speedup_bound"] >= 1
    assert report["bytes_sent_per_batch"] == [2 * 32 * 64 * 4 + (32 + 2 * names) * 8]
