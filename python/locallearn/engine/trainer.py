"""The training loop: epochs of ``rule.train_step`` over on-device batches, the
learning-rate schedule, evaluation after every epoch, metrics and atomic checkpoints
(at each epoch's end, and every N steps within it) from which ``resume`` continues
exactly; with a validation set, model selection by its error (seed 002 §5: scores "for
the set of model parameters that had lowest validation error"). In a data-parallel run
(:mod:`locallearn.engine.distributed`) every rank runs this loop on its shard of each
batch; metrics are reduced over ranks and rank 0 alone writes."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from locallearn.engine.checkpoint import load_checkpoint, remove_unfinished_writes, save_atomic, save_rotating
from locallearn.engine.divergence import Divergence, DivergenceWatch
from locallearn.engine.distributed import (
    SINGLE_PROCESS,
    GradientAveraging,
    World,
    broadcast_module_state,
    gather_to_all,
    sum_over_ranks,
)
from locallearn.engine.metrics import DiscardedLog, MetricsLog
from locallearn.engine.pipeline import LayerPipeline
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
    """How long and how fast: epochs, the base rate and its step decay; how often to log
    (``log_every`` steps) and to checkpoint within an epoch (``checkpoint_every`` steps, 0:
    only at its end), how many checkpoints to keep, and every how many steps the host
    reads whether the losses are still finite (``divergence_check_every``, see
    :mod:`locallearn.engine.divergence`)."""

    epochs: int
    lr: float
    lr_milestones: tuple[float, ...] = PAPER_MILESTONES
    lr_decay: float = PAPER_DECAY
    log_every: int = 50
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    divergence_check_every: int = 20
    milestones: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive finite rate, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay multiplies the rate at each milestone: it must be in (0, 1], got {self.lr_decay}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 (epoch ends only) or a number of steps, "
                             f"got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.divergence_check_every < 1:
            raise ValueError(f"divergence_check_every must be at least 1 step, got {self.divergence_check_every}")
        self.milestones = milestone_epochs(self.epochs, tuple(self.lr_milestones))

    def lr_at(self, epoch: int) -> float:
        return learning_rate(self.lr, epoch, self.milestones, self.lr_decay)


@dataclass
class EpochProgress:
    """How far this rank is into an epoch: batches and images done, training seconds, and
    the step metrics summed (weighted by batch size) over the epoch and over the current
    log window. A mid-epoch checkpoint holds every rank's."""

    batches: int = 0
    images: int = 0
    seconds: float = 0.0
    sums: dict[str, Tensor] = field(default_factory=dict)
    window_images: int = 0
    window: dict[str, Tensor] = field(default_factory=dict)

    def add(self, values: dict[str, Tensor], count: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0) + value * count
            self.window[key] = self.window.get(key, 0) + value * count
        self.batches += 1
        self.images += count
        self.window_images += count

    def state(self) -> dict:
        return {"batches": self.batches, "images": self.images, "seconds": self.seconds, "sums": dict(self.sums),
                "window_images": self.window_images, "window": dict(self.window)}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> EpochProgress:
        def on_device(sums: dict) -> dict[str, Tensor]:
            return {key: value.to(device) for key, value in sums.items()}
        return cls(state["batches"], state["images"], state["seconds"], on_device(state["sums"]),
                   state["window_images"], on_device(state["window"]))


class Trainer:
    """Runs ``rule`` on ``train_loader`` / ``test_loader`` (``locallearn.data.DeviceLoader``)
    and writes ``metrics.jsonl`` and ``checkpoints/`` into ``run_dir``.

    With a ``validation_loader`` every epoch record also holds the validation error and
    the selection so far: the epoch of the lowest validation error (the first, on a tie),
    its validation and test errors; ``checkpoints/best.pt`` holds that epoch's state.

    Batch order and augmentation of epoch e come from a generator seeded with
    (seed, e), and a checkpoint holds every rank's global RNG state (dropout, noise) and
    its progress through the epoch, so a run resumed from any checkpoint, at an epoch's
    end or within it, continues exactly as it would have.

    ``world``: this process's rank in a data-parallel run, whose loaders serve this
    rank's shard; gradients are averaged over ranks at every optimiser step. With a
    ``pipeline`` (:mod:`locallearn.engine.pipeline`) the ranks are the stages of a
    layer-parallel run instead: each trains its blocks on every batch and nothing is averaged.
    """

    def __init__(self, rule: Rule, train_loader, test_loader, schedule: Schedule, run_dir: str | Path, *,
                 progress: bool = True, tensorboard: bool = False, validation_loader=None,
                 world: World = SINGLE_PROCESS, pipeline: LayerPipeline | None = None) -> None:
        if not isinstance(rule, Rule):
            raise ValueError(f"rule must be a locallearn Rule (see build_rule), got {type(rule).__name__}")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        for name, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
            if not hasattr(loader, "epoch"):
                raise ValueError(f"{name} must be a DeviceLoader or StreamingLoader, got {type(loader).__name__}")
        self.rule, self.train_loader, self.test_loader = rule, train_loader, test_loader
        self.validation_loader = validation_loader
        self.schedule, self.run_dir, self.world, self.pipeline = schedule, Path(run_dir), world, pipeline
        self.progress = progress and world.is_main
        if world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log = MetricsLog(self.run_dir, tensorboard=tensorboard)
        else:
            self.log = DiscardedLog()
        self.epoch = 0  # epochs completed
        self.step = 0  # optimisation steps completed
        self.epoch_progress = EpochProgress()  # of the epoch under way
        self.best: dict | None = None  # the selected epoch: best_epoch, best_validation_error, test_error_at_best
        self.checkpointed_step: int | None = None  # the step of the newest checkpoint
        self.divergence = DivergenceWatch(world, schedule.divergence_check_every)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def best_checkpoint_path(self) -> Path:
        return self.run_dir / BEST_CHECKPOINT_NAME

    def resume(self) -> None:
        """Continue from ``checkpoints/last.pt``: state, RNG, epoch progress and metrics as they
        were then. Rank 0 first deletes what checkpoint writes killed half-way left behind."""
        if self.world.is_main:
            remove_unfinished_writes(self.checkpoint_path.parent)
        state = load_checkpoint(self.checkpoint_path)
        ranks = state.get("ranks") or [{"rng": state["rng"]}]  # format 1: one rank, saved at an epoch's end
        if len(ranks) != self.world.size:
            raise ValueError(f"{self.checkpoint_path} was written by a run of {len(ranks)} process(es) and this "
                             f"run has {self.world.size}: the global batch, and with it every step, would differ; "
                             f"resume it with {len(ranks)} (torchrun --nproc_per_node and --nnodes)")
        self.rule.load_state_dict(state["rule"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.checkpointed_step = self.step
        self.best = state.get("best")
        own = ranks[self.world.rank]
        torch.set_rng_state(own["rng"]["cpu"])
        if torch.cuda.is_available() and own["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(own["rng"]["cuda"])
        self.epoch_progress = (EpochProgress.from_state(own["progress"], self.rule.device) if "progress" in own
                               else EpochProgress())
        self.log.truncate(state["metrics_bytes"])

    def fit(self) -> dict:
        """Train the remaining epochs; returns the last epoch's record."""
        record: dict = {}
        try:
            with GradientAveraging(SINGLE_PROCESS if self.pipeline else self.world) as self.averaging:
                while self.epoch < self.schedule.epochs:
                    record = self._run_epoch()
                    self.epoch += 1
                    self.epoch_progress = EpochProgress()
                    self._save_checkpoint(also_best=bool(self.best) and self.best["best_epoch"] == self.epoch)
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
        progress = self.epoch_progress
        waited, early, late = self.averaging.waited_seconds, self.averaging.started_early, self.averaging.started_late
        started = window_started = time.perf_counter()
        bar = tqdm(total=len(self.train_loader), initial=progress.batches, desc=f"epoch {epoch + 1}/{self.schedule.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for values, count in self._steps(generator, progress.batches):
            self.step += 1
            self._stop_if(self.divergence.observe(values, self.step))
            progress.add(values, count)
            bar.update()
            if self.step % self.schedule.log_every == 0:
                window, images = self._reduced(progress.window, progress.window_images)
                step_record = {"kind": "step", "epoch": epoch + 1, "step": self.step, "lr": lr, **window,
                               "images_per_s": images / (time.perf_counter() - window_started)}
                self.log.write(step_record)
                bar.set_postfix(loss=f"{step_record['loss']:.3f}", err=train_error_text(step_record, 3),
                                img_s=f"{step_record['images_per_s']:.0f}")
                progress.window, progress.window_images, window_started = {}, 0, time.perf_counter()
            every = self.schedule.checkpoint_every
            if every and self.step % every == 0 and progress.batches < len(self.train_loader):
                progress.seconds += time.perf_counter() - started
                self._save_checkpoint()
                started = time.perf_counter()
        self._stop_if(self.divergence.check_now())
        sums = dict(progress.sums)
        if self.rule.needs_epoch_pass:
            extra = self.rule.end_epoch(self.train_loader.epoch(_epoch_generator(self.schedule.seed, epoch, "pass")))
            sums.update({key: value * progress.images for key, value in extra.items()})
        _synchronize(device)
        seconds = progress.seconds + time.perf_counter() - started
        bar.close()
        means, images = self._reduced(sums, progress.images)
        if self.rule.needs_epoch_pass:  # its values, summed over the ranks, are the same on every rank
            self._stop_if(next((Divergence(self.step, [], f"{key} (the pass after the epoch)", means[key]) for key in extra
                                if not math.isfinite(means[key])), None))
        if self.pipeline:
            self.pipeline.gather()  # every stage's modules on every rank, as checkpointed
        else:
            broadcast_module_state(self.rule.trainable_modules())  # rank 0's batch-norm statistics, as checkpointed
        test_loss, test_error = self.evaluate()
        record = {"kind": "epoch", "epoch": epoch + 1, "step": self.step, "lr": lr, **means,
                  "test_loss": test_loss, "test_error": test_error, "images_per_s": images / seconds,
                  "train_seconds": seconds, "peak_memory_mb": _peak_memory_mb(device)}
        if self.world.is_distributed and not self.pipeline:  # this rank's; after a mid-epoch resumption, of the part since
            averages = self.averaging.started_early - early + self.averaging.started_late - late
            record["allreduce_wait_seconds"] = self.averaging.waited_seconds - waited
            record["allreduce_started_early"] = (self.averaging.started_early - early) / max(averages, 1)
        skipped = getattr(self.train_loader, "skipped_images", None)
        if skipped is not None:  # a streaming loader's unreadable files (this rank's, since the process started)
            record["skipped_images"] = skipped
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
            tqdm.write(f"epoch {epoch + 1}/{self.schedule.epochs}: train {error} {train_error_text(record, 4)}, "
                       f"{validation}test {error} {test_error:.4f}, {record['images_per_s']:.0f} images/s")
        return record

    def _steps(self, generator: torch.Generator, start: int):
        """Each training step's values and number of examples, from ``start`` batches into the epoch."""
        if self.pipeline:
            if start:
                raise ValueError("a layer-parallel run resumes at epoch ends only")
            yield from self.pipeline.epoch(self.train_loader, generator)
            return
        for x, y in self.train_loader.epoch(generator, start=start):
            yield self.rule.train_step(x, y), len(y)

    def _reduced(self, sums: dict[str, Tensor], images: int) -> tuple[dict[str, float], int]:
        """Per-example means of ``sums`` over every rank's ``images``, and the total images."""
        if not sums:
            return {}, int(sum_over_ranks(torch.tensor([images], device=self.rule.device)).item())
        keys = list(sums)
        totals = sum_over_ranks(torch.stack([sums[key].float() for key in keys] +
                                            [torch.tensor(float(images), device=sums[keys[0]].device)]))
        images = int(totals[-1].item())
        return {key: (total / images).item() for key, total in zip(keys, totals[:-1])}, images

    @torch.no_grad()
    def evaluate(self, loader=None) -> tuple[float, float]:
        """(mean output loss, error) of the rule's predictions on ``loader`` (the test set by
        default; each rank its shard): cross-entropy and error rate, or an autoencoder's
        squared error and mean squared error per feature."""
        task = self.rule.model.task
        totals = torch.zeros(3, dtype=torch.float64, device=self.rule.device)  # loss, errors, examples
        for x, y in (self.test_loader if loader is None else loader).epoch(None):
            output = self.rule.predict(x)
            totals[0] += task.loss(output, x, y, reduction="sum").double()
            totals[1] += task.error(output, x, y).double() * len(y)
            totals[2] += len(y)
        loss, errors, count = sum_over_ranks(totals).tolist()
        return loss / count, errors / count

    def _stop_if(self, divergence: Divergence | None) -> None:
        if divergence is None:
            return
        kept = (f"the last good checkpoint is {self.checkpoint_path} (step {self.checkpointed_step})"
                if self.checkpointed_step is not None else "no checkpoint had been written yet")
        where = (f" on rank {', '.join(map(str, divergence.ranks))}" if self.world.is_distributed and divergence.ranks
                 else "")
        what = (f"{divergence.name} is {divergence.value}" if divergence.name is not None
                else "its loss is no longer finite there")
        raise DivergenceError(f"rule {self.rule.name!r} diverged at step {divergence.step} (epoch {self.epoch + 1})"
                              f"{where}: {what}; {kept}")

    def _save_checkpoint(self, also_best: bool = False) -> None:
        """A checkpoint of every rank's state, written by rank 0: the rotating last ones and,
        with ``also_best``, ``checkpoints/best.pt`` first (a kill between the two reruns this
        epoch from the checkpoint before). Nothing is written from a diverged state."""
        self._stop_if(self.divergence.check_now())
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        ranks = gather_to_all({"rng": rng, "progress": self.epoch_progress.state()})
        self.checkpointed_step = self.step
        if not self.world.is_main:
            return
        state = {"epoch": self.epoch, "step": self.step, "rule": self.rule.state_dict(), "ranks": ranks,
                 "metrics_bytes": self.log.size(), **({"best": self.best} if self.best else {})}
        if also_best:
            save_atomic(state, self.best_checkpoint_path)
        save_rotating(state, self.checkpoint_path, self.step, self.schedule.keep_checkpoints)


def train_error_text(record: dict, digits: int) -> str:
    """A record's training error for a progress line; a layer-parallel AL run measures none
    (rules/associated.py, ``stage_metric_names``)."""
    return f"{record['train_error']:.{digits}f}" if "train_error" in record else "not measured"


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


__all__ = ["BEST_CHECKPOINT_NAME", "CHECKPOINT_NAME", "DivergenceError", "EpochProgress", "Schedule", "Trainer"]
