"""Resuming from what a crash can leave behind (issue 19): a run stopped before its first
checkpoint, a checkpoint write killed half-way, a checkpoint of another format, a rule with
a pass after each epoch, and a run on CUDA. A resumed run must end as the uninterrupted one,
and deletes the temporary file a killed write left."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import interrupt_at_step

from locallearn import cli, engine

TIMING_FIELDS = ("images_per_s", "train_seconds", "peak_memory_mb")


def settings(run_dir, **changes) -> engine.TrainSettings:
    values = dict(rule="predsim", data="digits", width=32, depth=2, epochs=2, batch_size=32, device="cpu",
                  log_every=5, dropout=0.1, run_dir=str(run_dir))
    return engine.TrainSettings(**{**values, **changes})


def epoch_records(run_dir) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS}
            for record in engine.read_metrics(run_dir) if record["kind"] == "epoch"]


def assert_same_end(expected_dir, actual_dir) -> None:
    assert epoch_records(actual_dir) == epoch_records(expected_dir)
    steps = [record["step"] for record in engine.read_metrics(actual_dir) if record["kind"] == "step"]
    assert steps == sorted(set(steps))  # nothing logged twice
    mine, theirs = (engine.load_checkpoint(path / engine.CHECKPOINT_NAME)["rule"]["modules"]
                    for path in (expected_dir, actual_dir))
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)


def test_a_run_stopped_before_its_first_checkpoint_starts_over_when_resumed(tmp_path):
    engine.start_run(settings(tmp_path / "reference"), progress=False).fit()
    trainer = engine.start_run(settings(tmp_path / "stopped"), progress=False)
    interrupt_at_step(trainer, 12)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert not trainer.checkpoint_path.exists()
    assert any(record["kind"] == "step" for record in engine.read_metrics(tmp_path / "stopped"))
    engine.resume_run(tmp_path / "stopped", progress=False).fit()
    assert_same_end(tmp_path / "reference", tmp_path / "stopped")


def test_a_rule_with_a_pass_after_each_epoch_resumes_where_it_stopped(tmp_path):
    """DDTP trains its feedback mappings in a pass after each epoch (rules/ddtp.py); a run
    stopped in epoch 2 resumes from epoch 1's checkpoint, which holds what that pass trained."""
    ddtp = dict(rule="ddtp", batch_norm=False, dropout=0.0, feedback_schedule="epoch", epochs=3)
    engine.start_run(settings(tmp_path / "reference", **ddtp), progress=False).fit()
    trainer = engine.start_run(settings(tmp_path / "stopped", **ddtp), progress=False)
    interrupt_at_step(trainer, len(trainer.train_loader) + 3)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert engine.load_checkpoint(trainer.checkpoint_path)["epoch"] == 1
    engine.resume_run(tmp_path / "stopped", progress=False).fit()
    assert_same_end(tmp_path / "reference", tmp_path / "stopped")


def test_a_checkpoint_of_another_format_is_refused_naming_both(tmp_path, capsys):
    trainer = engine.start_run(settings(tmp_path / "run", epochs=1), progress=False)
    trainer.fit()
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    torch.save({**state, "format": 99}, trainer.checkpoint_path)
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "is checkpoint format 99; this locallearn reads formats 1, 2" in capsys.readouterr().err


SAVER = """
import sys
import torch
from locallearn.engine.checkpoint import save_atomic

data = torch.arange(25_000_000, dtype=torch.float32)  # 100 MB: each write takes a while
for round in range(1, 1000):
    save_atomic({"round": torch.tensor(round), "data": data + round}, sys.argv[1])
    print(round, flush=True)
"""


def test_a_checkpoint_write_killed_half_way_leaves_the_previous_checkpoint_whole(tmp_path):
    """A real SIGKILL, while the temporary file of the next write is on disk and growing."""
    path = tmp_path / "last.pt"
    process = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "1"  # one complete checkpoint
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partial = [entry for entry in tmp_path.iterdir() if entry.name.endswith(".tmp") and entry.stat().st_size]
            if partial:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        else:
            pytest.fail("no checkpoint write was caught under way")
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    state = engine.load_checkpoint(path)
    assert torch.equal(state["data"], torch.arange(25_000_000, dtype=torch.float32) + state["round"])


def test_resuming_deletes_what_a_killed_checkpoint_write_left_behind(tmp_path):
    """The killed write above leaves its temporary file; resuming the run removes it and
    touches nothing else."""
    engine.start_run(settings(tmp_path, epochs=1), progress=False).fit()
    checkpoints = (tmp_path / engine.CHECKPOINT_NAME).parent
    kept = sorted(path.name for path in checkpoints.iterdir())
    (checkpoints / ".last.pt.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")
    (checkpoints / ".step-0000000045.pt.a_b9.tmp").write_bytes(b"")
    engine.resume_run(tmp_path, progress=False)
    assert sorted(path.name for path in checkpoints.iterdir()) == kept


@pytest.mark.cuda
def test_a_run_on_cuda_resumes_mid_epoch_to_the_uninterrupted_run(tmp_path):
    """On a GPU the checkpoint carries the CUDA RNG state (dropout masks are drawn there)."""
    cuda = dict(device="cuda", deterministic=True, checkpoint_every=10, epochs=2)
    engine.start_run(settings(tmp_path / "reference", **cuda), progress=False).fit()
    trainer = engine.start_run(settings(tmp_path / "stopped", **cuda), progress=False)
    interrupt_at_step(trainer, 25)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert engine.load_checkpoint(trainer.checkpoint_path)["step"] == 20
    engine.resume_run(tmp_path / "stopped", progress=False).fit()
    assert_same_end(tmp_path / "reference", tmp_path / "stopped")


def test_deterministic_runs_on_cuda_get_the_fixed_cublas_workspace_they_need(monkeypatch):
    """Without CUBLAS_WORKSPACE_CONFIG, torch's deterministic mode makes cuBLAS raise at the
    first matrix product: --deterministic on a GPU (the test above) could not train."""
    from locallearn.engine.run import use_deterministic_algorithms

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_algorithms(True, torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        use_deterministic_algorithms(True, torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's own setting stays
    finally:
        torch.use_deterministic_algorithms(False)
