"""Layer-parallel training (--layer-parallel K, locallearn.engine.pipeline) on the CPU with
gloo: the stage split, the refusals, and two stages under torchrun, waiting for every send
(--sync) and not, against one process: the same weights, optimiser state and metrics,
because a stage's input for batch t is computed by the weights before batch t in both
(the module's docstring); a killed stage stops its neighbour with a message naming it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from locallearn import config, engine
from locallearn.engine import pipeline
from locallearn.engine.run import TrainSettings, build_parts, build_trainer, load_trained
from locallearn.engine.distributed import World

TIMING_FIELDS = ("images_per_s", "train_seconds", "peak_memory_mb")
RECIPE = {"rule": "predsim", "data": "digits", "model": "mlp", "depth": 3, "width": 64, "epochs": 3,
          "batch-size": 32, "lr": 2e-3, "dropout": 0.0, "augment": False, "device": "cpu", "log-every": 10, "seed": 3}
"""predsim with batch norm and Adam; no dropout (each process draws its own masks)."""


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
    settings = TrainSettings(**{key.replace("-", "_"): value for key, value in RECIPE.items()}).resolved()
    parts = build_parts(settings)
    rule = parts.rule
    x, y = next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(0))))
    before = {key: value.clone() for key, value in rule.trainable_modules().state_dict().items()}
    rng = torch.get_rng_state()
    seconds = pipeline.measure_block_seconds(rule, x, y)
    assert len(seconds) == 3 and all(value > 0 for value in seconds)
    after = rule.trainable_modules().state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # batch-norm statistics too
    assert all(p.grad is None for p in rule.trainable_modules().parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_metric_names_are_the_keys_of_a_step():
    settings = TrainSettings(**{key.replace("-", "_"): value for key, value in RECIPE.items()}).resolved()
    parts = build_parts(settings)
    x, y = next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(0))))
    assert list(parts.rule.train_step(x, y)) == parts.rule.metric_names()


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("change, message", [
    ({"rule": "backprop"}, "'backprop' cannot: its gradient crosses every stage boundary backward"),
    ({"rule": "dtp"}, "'dtp' cannot: each layer's target is computed from the layer above it"),
    ({"rule": "dfa"}, "'dfa' cannot: every stage needs the output error"),
    ({"rule": "al"}, "'al' cannot: its components' targets are not yet sent between stages"),
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
    settings = TrainSettings(**{key.replace("-", "_"): value for key, value in RECIPE.items()},
                             layer_parallel=1, stages=(4,), run_dir=str(tmp_path / "run")).resolved()
    with pytest.raises(ValueError, match=r"--stages 4: .* 3 blocks in all \(the network has 3\)"):
        build_trainer(settings, progress=False)


def test_one_stage_is_a_single_process_run(tmp_path):
    def settings(name, **extra):
        values = {key.replace("-", "_"): value for key, value in RECIPE.items()}
        return TrainSettings(**{**values, "epochs": 1, **extra}, run_dir=str(tmp_path / name)).resolved()

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


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One process (one thread, as each torchrun process), then two stages with --sync and without."""
    out = tmp_path_factory.mktemp("layer-parallel")
    recipe = out / "recipe.toml"
    recipe.write_text(config.dump_toml(RECIPE), encoding="utf-8")
    single = [sys.executable, *train_command(recipe, out / "single")]
    completed = subprocess.run(single, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    torchrun(*train_command(recipe, out / "sync", "--layer-parallel", "2", "--stages", "2", "1", "--sync"))
    torchrun(*train_command(recipe, out / "async", "--layer-parallel", "2"))
    return out


def assert_same_run(expected: Path, actual: Path) -> None:
    mine, theirs = (engine.load_checkpoint(path / engine.CHECKPOINT_NAME)["rule"] for path in (expected, actual))
    assert mine["modules"].keys() == theirs["modules"].keys()
    for key, value in mine["modules"].items():
        assert torch.equal(value, theirs["modules"][key]), key
    for index, (one, two) in enumerate(zip(mine["optimizers"], theirs["optimizers"], strict=True)):
        for parameter, state in one["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(two["state"][parameter][name])), \
                    (index, parameter, name)
    records = [[{key: value for key, value in record.items() if key not in TIMING_FIELDS}
                for record in engine.read_metrics(path)] for path in (expected, actual)]
    assert len(records[0]) == len(records[1])
    for mine, theirs in zip(*records):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            # training metrics are the same sums; the test set is sharded over the stages, so its
            # loss and error are float32 sums over other groups of examples (float32 rounding)
            assert theirs[key] == (pytest.approx(value, rel=1e-6) if key.startswith("test_") else value), key


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_two_stages_give_the_single_process_weights_and_metrics_exactly(runs, schedule):
    assert_same_run(runs / "single", runs / schedule)
    settings = config.load_toml(runs / schedule / engine.CONFIG_NAME)
    assert settings["layer-parallel"] == 2 and settings["world-size"] == 2
    assert sorted(path.name for path in (runs / schedule).iterdir()) == sorted(
        path.name for path in (runs / "single").iterdir())


def test_a_layer_parallel_run_loads_as_a_single_process_one(runs):
    """What `locallearn analyze` reads: one process rebuilds the whole trained network."""
    settings, parts, epochs = load_trained(runs / "async")
    assert settings.layer_parallel == 2 and epochs == RECIPE["epochs"]
    saved = engine.load_checkpoint(runs / "async" / engine.CHECKPOINT_NAME)["rule"]["modules"]
    for key, value in parts.rule.trainable_modules().state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_the_asynchronous_pipeline_learns_digits(runs):
    last = [record for record in engine.read_metrics(runs / "async") if record["kind"] == "epoch"][-1]
    assert last["test_error"] < 0.1


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
