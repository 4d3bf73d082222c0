"""The training loop: epochs of ``rule.train_step`` over on-device batches, the
learning-rate schedule, evaluation after every epoch, metrics and an atomic
checkpoint per epoch from which ``resume`` continues exactly; with a validation set,
model selection by its error (seed 002 §5: scores "for the set of model parameters
that had lowest validation error")."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from locallearn.engine.checkpoint import load_checkpoint, save_atomic
from locallearn.engine.metrics import MetricsLog
from locallearn.engine.schedule import (
    PAPER_DECAY,
    PAPER_MILESTONES,
    learning_rate,
    milestone_epochs,
    scale_learning_rates,
)
from locallearn.rules import Rule

CHECKPOINT_NAME = "checkpoints/last.pt"
BEST_CHECKPOINT_NAME = "checkpoints/best.pt"


class DivergenceError(RuntimeError):
    """A loss became NaN or Inf; the run stopped and its last good checkpoint is kept."""


@dataclass
class Schedule:
    """How long and how fast: epochs, the base rate and its step decay."""

    epochs: int
    lr: float
    lr_milestones: tuple[float, ...] = PAPER_MILESTONES
    lr_decay: float = PAPER_DECAY
    log_every: int = 50
    seed: int = 0
    milestones: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {self.log_every}")
        self.milestones = milestone_epochs(self.epochs, tuple(self.lr_milestones))

    def lr_at(self, epoch: int) -> float:
        return learning_rate(self.lr, epoch, self.milestones, self.lr_decay)


class Trainer:
    """Runs ``rule`` on ``train_loader`` / ``test_loader`` (``locallearn.data.DeviceLoader``)
    and writes ``metrics.jsonl`` and ``checkpoints/last.pt`` into ``run_dir``.

    With a ``validation_loader`` every epoch record also holds the validation error and
    the selection so far: the epoch of the lowest validation error (the first, on a tie),
    its validation and test errors; ``checkpoints/best.pt`` holds that epoch's state.

    Batch order and augmentation of epoch e come from a generator seeded with
    (seed, e), and the checkpoint holds the global RNG state (dropout), so a run
    resumed from a checkpoint continues exactly as it would have.
    """

    def __init__(self, rule: Rule, train_loader, test_loader, schedule: Schedule, run_dir: str | Path, *,
                 progress: bool = True, tensorboard: bool = False, validation_loader=None) -> None:
        self.rule, self.train_loader, self.test_loader = rule, train_loader, test_loader
        self.validation_loader = validation_loader
        self.schedule, self.run_dir, self.progress = schedule, Path(run_dir), progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.run_dir, tensorboard=tensorboard)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimisation steps completed
        self.best: dict | None = None  # the selected epoch: best_epoch, best_validation_error, test_error_at_best

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def best_checkpoint_path(self) -> Path:
        return self.run_dir / BEST_CHECKPOINT_NAME

    def resume(self) -> None:
        """Continue from ``checkpoints/last.pt``: state, RNG and metrics as they were then."""
        state = load_checkpoint(self.checkpoint_path)
        self.rule.load_state_dict(state["rule"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best = state.get("best")
        torch.set_rng_state(state["rng"]["cpu"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.log.truncate(state["metrics_bytes"])

    def fit(self) -> dict:
        """Train the remaining epochs; returns the last epoch's record."""
        record: dict = {}
        try:
            while self.epoch < self.schedule.epochs:
                record = self._run_epoch()
                self.epoch += 1
                # best.pt first: a kill between the two reruns this epoch from the last.pt before it.
                self._save_checkpoint(self.best_checkpoint_path if self.best and
                                      self.best["best_epoch"] == self.epoch else None)
        finally:
            self.log.close()
        return record

    def _run_epoch(self) -> dict:
        epoch = self.epoch
        lr = self.schedule.lr_at(epoch)
        scale_learning_rates(self.rule.optimizers(), lr / self.schedule.lr)
        self.rule.begin_epoch(epoch)
        device = self.rule.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        generator = _epoch_generator(self.schedule.seed, epoch)
        sums: dict[str, torch.Tensor] = {}
        window: dict[str, torch.Tensor] = {}
        images = window_images = 0
        started = window_started = time.perf_counter()
        bar = tqdm(total=len(self.train_loader), desc=f"epoch {epoch + 1}/{self.schedule.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for x, y in self.train_loader.epoch(generator):
            values = self.rule.train_step(x, y)
            self.step += 1
            self._stop_if_diverged(values)
            for key, value in values.items():
                sums[key] = sums.get(key, 0) + value * len(y)
                window[key] = window.get(key, 0) + value * len(y)
            images += len(y)
            window_images += len(y)
            bar.update()
            if self.step % self.schedule.log_every == 0:
                elapsed = time.perf_counter() - window_started
                step_record = {"kind": "step", "epoch": epoch + 1, "step": self.step, "lr": lr,
                               **{key: (value / window_images).item() for key, value in window.items()},
                               "images_per_s": window_images / elapsed}
                self.log.write(step_record)
                bar.set_postfix(loss=f"{step_record['loss']:.3f}", err=f"{step_record['train_error']:.3f}",
                                img_s=f"{step_record['images_per_s']:.0f}")
                window, window_images, window_started = {}, 0, time.perf_counter()
        if self.rule.needs_epoch_pass:
            extra = self.rule.end_epoch(self.train_loader.epoch(_epoch_generator(self.schedule.seed, epoch, "pass")))
            sums.update({key: value * images for key, value in extra.items()})
        _synchronize(device)
        seconds = time.perf_counter() - started
        bar.close()
        test_loss, test_error = self.evaluate()
        record = {"kind": "epoch", "epoch": epoch + 1, "step": self.step, "lr": lr,
                  **{key: (value / images).item() for key, value in sums.items()},
                  "test_loss": test_loss, "test_error": test_error, "images_per_s": images / seconds,
                  "train_seconds": seconds, "peak_memory_mb": _peak_memory_mb(device)}
        if self.validation_loader is not None:
            record["validation_loss"], record["validation_error"] = self.evaluate(self.validation_loader)
            if self.best is None or record["validation_error"] < self.best["best_validation_error"]:
                self.best = {"best_epoch": epoch + 1, "best_validation_error": record["validation_error"],
                             "test_error_at_best": test_error}
            record.update(self.best)
        self.log.write(record)
        if self.progress:
            error = self.rule.model.task.error_name
            validation = (f"validation {error} {record['validation_error']:.4f}, "
                          if "validation_error" in record else "")
            tqdm.write(f"epoch {epoch + 1}/{self.schedule.epochs}: train {error} {record['train_error']:.4f}, "
                       f"{validation}test {error} {test_error:.4f}, {record['images_per_s']:.0f} images/s")
        return record

    @torch.no_grad()
    def evaluate(self, loader=None) -> tuple[float, float]:
        """(mean output loss, error) of the rule's predictions on ``loader`` (the test set by
        default): cross-entropy and error rate, or an autoencoder's squared error and mean
        squared error per feature."""
        task = self.rule.model.task
        loss = errors = 0.0
        count = 0
        for x, y in (self.test_loader if loader is None else loader).epoch(None):
            output = self.rule.predict(x)
            loss += task.loss(output, x, y, reduction="sum").item()
            errors += task.error(output, x, y).item() * len(y)
            count += len(y)
        return loss / count, errors / count

    def _stop_if_diverged(self, values: dict[str, torch.Tensor]) -> None:
        finite = torch.stack([value.float() for value in values.values()]).isfinite()
        if bool(finite.all()):
            return
        name = next(key for key, ok in zip(values, finite.tolist()) if not ok)
        kept = (f"the last good checkpoint is {self.checkpoint_path} (epoch {self.epoch})"
                if self.checkpoint_path.is_file() else "no epoch had completed, so there is no checkpoint")
        raise DivergenceError(f"rule {self.rule.name!r} diverged at step {self.step} (epoch {self.epoch + 1}): "
                              f"{name} is {values[name].item()}; {kept}")

    def _save_checkpoint(self, also: Path | None = None) -> None:
        """checkpoints/last.pt, and the same state at ``also`` first, when given."""
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        state = {"epoch": self.epoch, "step": self.step, "rule": self.rule.state_dict(), "rng": rng,
                 "metrics_bytes": self.log.size(), **({"best": self.best} if self.best else {})}
        for path in ([also] if also else []) + [self.checkpoint_path]:
            save_atomic(state, path)


def _epoch_generator(seed: int, epoch: int, purpose: str = "train") -> torch.Generator:
    """The generator for one epoch's order and augmentation, seeded from (seed, epoch)
    and distinct for a rule's extra pass; on the CPU, so that an epoch is the same on
    every device."""
    offset = {"train": 0, "pass": 500_001}[purpose]
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + offset)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated this epoch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


__all__ = ["CHECKPOINT_NAME", "DivergenceError", "Schedule", "Trainer"]
