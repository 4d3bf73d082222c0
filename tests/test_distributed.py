"""Data-parallel training through torchrun, on the CPU with gloo: 2 ranks × batch b give the
weights and metrics of 1 process × batch 2b for the rules whose losses are batch means; the
similarity losses keep each rank's matrix over its own batch (docs/distributed.md), checked
against that definition computed in one process; a rank killed mid-epoch is restarted by
torchrun and the run ends as an uninterrupted one; and the sharded loader, the checkpoint
rotation and the errors a user can act on."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from locallearn import config, engine
from locallearn.data import DeviceLoader
from locallearn.data.augmentation import Augmentation
from locallearn.engine import distributed
from locallearn.engine.checkpoint import save_rotating, step_checkpoints
from locallearn.engine.run import build_parts, build_trainer, resume_run
from locallearn.engine.trainer import _epoch_generator

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402
from helpers import interrupt_at_step, load_benchmark  # noqa: E402

MEAN_RULES = ("backprop", "pred", "fa", "dfa", "dtp", "lra-e")
"""Rules whose every loss is a mean over the batch, so that averaging two half-batch gradients
gives the whole batch's."""
TIMING_FIELDS = ("images_per_s", "train_seconds", "peak_memory_mb", "allreduce_wait_seconds",
                 "allreduce_started_early")


def torchrun(*arguments: str, environment: dict | None = None, restarts: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", str(restarts), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(environment or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    torchrun(str(Path(worker.__file__)), str(out), *MEAN_RULES, "predsim")
    return out


def final_modules(run_dir: Path) -> dict[str, torch.Tensor]:
    return engine.load_checkpoint(run_dir / engine.CHECKPOINT_NAME)["rule"]["modules"]


def epoch_records(run_dir: Path) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS}
            for record in engine.read_metrics(run_dir) if record["kind"] == "epoch"]


def assert_states_close(mine: dict, theirs: dict) -> None:
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        torch.testing.assert_close(theirs[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("rule", MEAN_RULES)
def test_two_ranks_match_one_process_with_twice_the_batch(rule, two_rank_runs, tmp_path):
    one = tmp_path / rule
    build_trainer(worker.settings_for(rule, one, 2 * worker.RANK_BATCH).resolved(), progress=False).fit()
    assert_states_close(final_modules(one), final_modules(two_rank_runs / rule))
    for single, ranks in zip(epoch_records(one), epoch_records(two_rank_runs / rule), strict=True):
        assert single.keys() == ranks.keys()
        for key, value in single.items():
            expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-5, abs=1e-6)
            assert ranks[key] == expected, key
    settings = config.load_toml(two_rank_runs / rule / engine.CONFIG_NAME)
    assert settings["world-size"] == 2 and settings["batch-size"] == worker.RANK_BATCH


def test_predsim_averages_each_ranks_own_similarity_loss(two_rank_runs):
    """predsim couples a batch's examples (its B×B similarity matrix): each rank's loss is over
    its own half, so a step's gradient is the mean of the two halves' gradients. With plain SGD
    that step is the mean of the two single-half steps from the same weights."""
    settings = worker.settings_for("predsim", two_rank_runs / "unused", 2 * worker.RANK_BATCH).resolved()
    parts = build_parts(settings)
    rule, modules = parts.rule, parts.rule.trainable_modules()
    half = worker.RANK_BATCH
    for epoch in range(settings.epochs):
        for x, y in parts.train_loader.epoch(_epoch_generator(settings.seed, epoch)):
            start = copy.deepcopy(modules.state_dict())
            stepped = []
            for rows in (slice(0, half), slice(half, 2 * half)):
                modules.load_state_dict(start)
                rule.train_step(x[rows], y[rows])
                stepped.append(copy.deepcopy(modules.state_dict()))
            modules.load_state_dict({key: (stepped[0][key] + stepped[1][key]) / 2 for key in start})
    assert_states_close(modules.state_dict(), final_modules(two_rank_runs / "predsim"))


def test_all_reduces_start_before_their_step_where_autograd_makes_the_gradients(two_rank_runs):
    """The local-loss rules step block k after block k+1's backward, so block k's all-reduce,
    started as its last gradient arrives, runs during that work; LRA-E sets its gradients
    itself, and they are averaged at the step."""
    def started_early(rule: str) -> float:
        return [record for record in engine.read_metrics(two_rank_runs / rule)
                if record["kind"] == "epoch"][-1]["allreduce_started_early"]

    assert started_early("pred") > 0.9 and started_early("predsim") > 0.9
    assert started_early("lra-e") == 0.0


def test_a_rank_killed_mid_epoch_is_restarted_and_the_run_ends_as_an_uninterrupted_one(two_rank_runs, tmp_path):
    """SIGKILL rank 1 at step 57 (epoch 2), 2 steps after the checkpoint of step 55; torchrun
    restarts both ranks, which resume from that checkpoint. --max-restarts 2: CI once saw a
    rank abort in gloo's teardown after the resumed run had finished (torch 2.11); a further
    restart finds the run complete and exits, as it would for a user."""
    recipe = tmp_path / "pred.toml"
    settings = worker.settings_for("pred", tmp_path / "run", worker.RANK_BATCH).to_dict()
    recipe.write_text(config.dump_toml({**settings, "checkpoint_every": 5}), encoding="utf-8")
    killer = tmp_path / "site"
    killer.mkdir()
    (killer / "sitecustomize.py").write_text(
        "import os, signal\n"
        "if os.environ.get('RANK') == '1' and os.environ.get('TORCHELASTIC_RESTART_COUNT') == '0':\n"
        "    from locallearn.engine import trainer\n"
        "    check = trainer.Trainer._stop_if\n"
        "    def check_then_die(self, divergence):\n"
        "        check(self, divergence)\n"
        "        if self.step == 57:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    trainer.Trainer._stop_if = check_then_die\n", encoding="utf-8")
    pythonpath = os.pathsep.join(filter(None, [str(killer), os.environ.get("PYTHONPATH")]))
    result = torchrun("-m", "locallearn", "train", "--config", str(recipe), "--run-dir", str(tmp_path / "run"),
                      "--no-progress", environment={"PYTHONPATH": pythonpath}, restarts=2)
    assert "-9" in result.stderr or "SIGKILL" in result.stderr, result.stderr[-2000:]  # it did die
    assert_states_close(final_modules(two_rank_runs / "pred"), final_modules(tmp_path / "run"))
    assert epoch_records(tmp_path / "run") == epoch_records(two_rank_runs / "pred")


def test_a_run_stopped_mid_epoch_resumes_there_and_ends_as_an_uninterrupted_one(tmp_path):
    def settings(name: str):  # dropout: the RNG state must come back too
        return dataclasses.replace(worker.settings_for("dfa", tmp_path / name, 32), checkpoint_every=7, dropout=0.2)

    engine.start_run(settings("whole"), progress=False).fit()
    trainer = engine.start_run(settings("stopped"), progress=False)
    steps_per_epoch = len(trainer.train_loader)
    interrupt_at_step(trainer, 60)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    state = engine.load_checkpoint(tmp_path / "stopped" / engine.CHECKPOINT_NAME)
    assert steps_per_epoch < 56 < 2 * steps_per_epoch  # so the newest checkpoint is step 56, mid-epoch
    assert state["step"] == 56 and state["epoch"] == 1
    assert state["ranks"][0]["progress"]["batches"] == 56 - steps_per_epoch
    resume_run(tmp_path / "stopped", progress=False).fit()
    for key, value in final_modules(tmp_path / "whole").items():
        assert torch.equal(final_modules(tmp_path / "stopped")[key], value), key
    assert epoch_records(tmp_path / "stopped") == epoch_records(tmp_path / "whole")


def test_rotation_keeps_the_newest_checkpoints_and_last_is_the_newest(tmp_path):
    last = tmp_path / "checkpoints" / "last.pt"
    for step in (5, 10, 15, 20):
        save_rotating({"step": step}, last, step, keep=2)
    assert [path.name for path in step_checkpoints(last.parent)] == ["step-0000000015.pt", "step-0000000020.pt"]
    assert engine.load_checkpoint(last)["step"] == 20
    assert sorted(path.name for path in last.parent.iterdir()) == ["last.pt", "step-0000000015.pt",
                                                                     "step-0000000020.pt"]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        save_rotating({"step": 25}, last, 25, keep=0)


def test_sharded_loader_serves_each_rank_its_slice_of_the_single_process_batches():
    images = torch.randint(0, 256, (103, 1, 6, 6), dtype=torch.uint8)
    labels = torch.arange(103) % 7
    common = dict(device="cpu", mean=[0.5], std=[0.25])
    augmentation = Augmentation(crop_padding=1, horizontal_flip=True, cutout=2)
    whole = DeviceLoader(images, labels, batch_size=20, augmentation=augmentation, drop_last=True, **common)
    ranks = [DeviceLoader(images, labels, batch_size=10, augmentation=augmentation, drop_last=True,
                          shard=(rank, 2), **common) for rank in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 5
    batches = [list(loader.epoch(torch.Generator().manual_seed(3))) for loader in ranks]
    for (x, y), (x0, y0), (x1, y1) in zip(whole.epoch(torch.Generator().manual_seed(3)), *batches, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    resumed = list(ranks[1].epoch(torch.Generator().manual_seed(3), start=3))
    assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(resumed, batches[1][3:]))
    # Evaluation: not shuffled, the last batch short; every example exactly once over the ranks.
    test = [DeviceLoader(images, labels, batch_size=8, shuffle=False, shard=(rank, 3), **common) for rank in range(3)]
    seen = torch.cat([y for loader in test for _, y in loader.epoch()])
    assert sorted(seen.tolist()) == sorted(labels.tolist())
    with pytest.raises(ValueError, match="shard must be"):
        DeviceLoader(images, labels, batch_size=8, shard=(2, 2), **common)
    with pytest.raises(ValueError, match="start must be"):
        ranks[0].epoch(torch.Generator(), start=6)


@pytest.mark.parametrize("environment, message", [
    ({"RANK": "0"}, "not LOCAL_RANK, WORLD_SIZE"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "do not describe a rank"),
    ({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "must be integers"),
])
def test_a_broken_torchrun_environment_is_refused(environment, message):
    with pytest.raises(ValueError, match=message):
        distributed.world_from_environment(environment)
    assert distributed.world_from_environment({}) == distributed.SINGLE_PROCESS
    assert distributed.world_from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == \
        distributed.World(1, 4, 1)


def test_errors_before_any_work(tmp_path):
    two = distributed.World(0, 2, 0)
    cpu = worker.settings_for("backprop", tmp_path / "a", 16)
    with pytest.raises(ValueError, match="SyncBatchNorm has no CPU"):
        build_parts(dataclasses.replace(cpu, sync_batch_norm=True, batch_norm=True).resolved(two), two)
    with pytest.raises(ValueError, match="has no batch norm"):
        build_parts(dataclasses.replace(cpu, sync_batch_norm=True).resolved())
    with pytest.raises(ValueError, match="world-size 2 given, but this run has 1"):
        dataclasses.replace(cpu, world_size=2).resolved()
    engine.start_run(dataclasses.replace(cpu, epochs=1), progress=False).fit()
    with pytest.raises(ValueError, match="started with 1 process"):
        resume_run(tmp_path / "a", progress=False, world=two)
    state = engine.load_checkpoint(tmp_path / "a" / engine.CHECKPOINT_NAME)
    assert len(state["ranks"]) == 1
    assert json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1


def test_scaling_benchmark_trains_on_one_and_two_processes(tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(config.dump_toml(worker.settings_for("backprop", tmp_path / "unused", 16).to_dict()),
                      encoding="utf-8")
    out = tmp_path / "scaling.json"
    load_benchmark("bench_scaling").main(["--config", str(recipe), "--rule", "pred", "--processes", "1", "2",
                                          "--cores", "2", "--epochs", "1", "--late", "--out", str(tmp_path / "runs"),
                                          "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["device"].endswith(f"{os.cpu_count()} cores")  # the machine is named
    rows = result["runs"]
    assert [(row["processes"], row["threads_per_process"], row["communication"]) for row in rows] == \
        [(1, 2, "early"), (2, 1, "early"), (2, 1, "late")]
    assert all(row["images_per_s"] > 0 and 0 <= row["test_error"] < 0.9 for row in rows)
    assert rows[1]["allreduce_started_early"] > 0.9 and rows[2]["allreduce_started_early"] == 0
    assert rows[1]["test_error"] == pytest.approx(rows[2]["test_error"], abs=1e-6)  # the same steps either way
    assert "speed-up" in capsys.readouterr().out
    run_dirs = sorted((tmp_path / "runs").glob("*/2-processes"))
    assert config.load_toml(run_dirs[0] / engine.CONFIG_NAME)["world-size"] == 2
