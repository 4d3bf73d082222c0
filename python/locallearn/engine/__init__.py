"""Training runs: the loop, checkpoints, metrics and run directories."""

from locallearn.engine.checkpoint import load_checkpoint, save_atomic
from locallearn.engine.metrics import MetricsLog, read_metrics
from locallearn.engine.run import (CONFIG_NAME, RunParts, TrainSettings, build_parts, build_trainer, load_trained,
                                  read_settings, resume_run, start_run)
from locallearn.engine.trainer import CHECKPOINT_NAME, DivergenceError, Schedule, Trainer

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "DivergenceError", "MetricsLog", "RunParts", "Schedule", "TrainSettings",
           "Trainer", "build_parts", "build_trainer", "load_checkpoint", "load_trained", "read_metrics", "read_settings",
           "resume_run", "save_atomic", "start_run"]
