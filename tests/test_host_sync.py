"""The trainer's steady state never makes the host wait for the device: no tensor is
turned into a Python value per step (divergence is read every N steps, late, from host
memory; metrics only when logged), and a diverged run still stops with the same message
and its last good checkpoint."""

import collections
import sys
from pathlib import Path

import pytest
import torch

import locallearn
from locallearn import engine
from locallearn.rules import RULE_NAMES

from helpers import NanAtStep

PACKAGE = str(Path(locallearn.__file__).parent)
CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")
"""Every Tensor method that hands a value to Python (on a GPU, after waiting for the device)."""
HOST_READS = {"_collect", "host_coin_flip"}
"""locallearn functions that convert tensors already in host memory: the divergence watch's
snapshot (copied without blocking N steps earlier) and eqprop's CPU-generator coin."""


class ConversionCounter:
    """Patches ``CONVERSIONS`` to record, for each call made from locallearn's own code,
    the function that made it and the trainer's step at that moment."""

    def __init__(self, monkeypatch):
        self.trainer = None
        self.calls: list[tuple[str, str, int | None]] = []
        for name in CONVERSIONS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(PACKAGE):
                step = self.trainer.step if self.trainer is not None else None
                self.calls.append((name, frame.f_code.co_name, step))
            return original(tensor, *args, **kwargs)
        return counted


def train(tmp_path, monkeypatch, rule: str, images: int, **options) -> tuple[engine.Trainer, ConversionCounter]:
    counter = ConversionCounter(monkeypatch)
    settings = engine.TrainSettings(rule=rule, data="digits", width=16, depth=1 if rule == "eqprop" else 3, epochs=1,
                                    device="cpu", batch_size=4, train_subset=images, log_every=10**6,
                                    run_dir=str(tmp_path / f"{rule}-{images}"), **options)
    trainer = engine.start_run(settings, progress=False)
    counter.trainer = trainer
    trainer.fit()
    return trainer, counter


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_no_tensor_reaches_python_in_a_steady_state_step(tmp_path, monkeypatch, rule):
    """Two runs of 50 and 150 steps: every conversion the longer run makes beyond the
    shorter one's is a host read at a divergence check step (every 20th) or eqprop's coin."""
    short_trainer, short = train(tmp_path, monkeypatch, rule, 200)
    long_trainer, long = train(tmp_path, monkeypatch, rule, 600)
    assert (short_trainer.step, long_trainer.step) == (50, 150)
    every = long_trainer.schedule.divergence_check_every
    in_loop = [call for call in long.calls if call[2] is not None and 0 < call[2] < long_trainer.step]
    syncing = [call for call in in_loop if call[1] not in HOST_READS]
    assert syncing == [], f"{len(syncing)} conversions in steady-state steps, e.g. {syncing[:3]}"
    checks = {call[2] for call in in_loop if call[1] == "_collect"}
    assert checks and all(step % every == 0 for step in checks)
    assert collections.Counter(name for name, function, _ in long.calls if function not in HOST_READS) == \
        collections.Counter(name for name, function, _ in short.calls if function not in HOST_READS)


@pytest.mark.parametrize("bad_step", [7, 20, 21, 39])
def test_divergence_read_late_names_the_first_bad_step_and_stops_within_two_checks(tmp_path, bad_step):
    settings = engine.TrainSettings(rule="backprop", data="digits", width=16, depth=1, epochs=1, device="cpu",
                                    batch_size=4, train_subset=400, divergence_check_every=10,
                                    run_dir=str(tmp_path / "run"))
    trainer = engine.start_run(settings, progress=False)
    trainer.rule = NanAtStep(trainer.rule, bad_step)
    with pytest.raises(engine.DivergenceError, match=rf"diverged at step {bad_step} \(epoch 1\): loss/output is nan"):
        trainer.fit()
    assert bad_step <= trainer.step < (bad_step // 10 + 2) * 10 + 1


def test_no_checkpoint_is_written_after_an_unread_divergence(tmp_path):
    """A mid-epoch checkpoint falls between two checks: it reads the watch first."""
    settings = engine.TrainSettings(rule="backprop", data="digits", width=16, depth=1, epochs=1, device="cpu",
                                    batch_size=4, train_subset=400, divergence_check_every=50,
                                    checkpoint_every=10, run_dir=str(tmp_path / "run"))
    trainer = engine.start_run(settings, progress=False)
    trainer.rule = NanAtStep(trainer.rule, 15)
    with pytest.raises(engine.DivergenceError, match="step 15 .*last good checkpoint .*step 10"):
        trainer.fit()
    assert trainer.step == 20
    assert engine.load_checkpoint(trainer.checkpoint_path)["step"] == 10


def test_divergence_check_every_must_be_positive():
    with pytest.raises(ValueError, match="divergence_check_every"):
        engine.Schedule(epochs=1, lr=0.1, divergence_check_every=0)


@pytest.mark.cuda
def test_steady_state_steps_do_not_synchronise_on_the_gpu(tmp_path):
    """torch's own sync detector, armed after the first steps: any host synchronisation
    in the steady state of predsim's and backprop's training loop raises."""
    for rule in ("backprop", "predsim"):
        settings = engine.TrainSettings(rule=rule, data="digits", width=64, depth=3, epochs=1, device="cuda",
                                        batch_size=16, log_every=10**6, divergence_check_every=10**6,
                                        run_dir=str(tmp_path / rule))
        trainer = engine.start_run(settings, progress=False)
        rule_step, steps = trainer.rule.train_step, len(trainer.train_loader)

        def armed_step(x, y, _step=rule_step, _trainer=trainer, _steps=steps):
            """Armed from the third step to the one before last (the epoch's end synchronises)."""
            torch.cuda.set_sync_debug_mode("error" if 2 <= _trainer.step < _steps - 1 else "default")
            return _step(x, y)

        trainer.rule.train_step = armed_step
        try:
            trainer.fit()
        finally:
            torch.cuda.set_sync_debug_mode("default")
