"""Divergence detection without a host synchronisation per training step.

Every step's values (losses, error) are tested for NaN/Inf on the device, and the first
failing step and its values are kept there. The host reads that record only every
``check_every`` steps, and late: the read started at step kN (summed over ranks,
copied to pinned host memory without blocking) is collected at step (k+1)N, by which
time the device has long finished it, so the host never waits for the device in the
steady state. ``check_now`` reads synchronously (before a checkpoint is written, at an
epoch's end), so that no checkpoint ever holds a diverged state. Every rank reads at the
same steps, so every rank stops at the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from locallearn.engine.distributed import World, sum_over_ranks


@dataclass(frozen=True)
class Divergence:
    """The first step at which a value stopped being finite, the ranks it happened on
    (empty where the value was summed over every rank) and, when this rank is one of them,
    the first non-finite value's name and value."""

    step: int
    ranks: list[int]
    name: str | None
    value: float | None


class DivergenceWatch:
    """Watches the values a rule's ``train_step`` returns (see the module docstring)."""

    def __init__(self, world: World, check_every: int) -> None:
        """``check_every`` ≥ 1, as :class:`~locallearn.engine.trainer.Schedule` checks."""
        self.world, self.check_every = world, check_every
        self.keys: tuple[str, ...] | None = None
        self.first_step: Tensor | None = None  # -1 while every value has been finite
        self.first_values: Tensor | None = None
        self.pending: tuple[Tensor, torch.cuda.Event | None] | None = None

    def observe(self, values: dict[str, Tensor], step: int) -> Divergence | None:
        """Record step ``step``'s values; a divergence that a finished read found, else None."""
        keys = tuple(values)
        found = None
        if keys != self.keys:  # the first step, or a rule whose values changed: start afresh
            found = self.check_now() if self.keys is not None else None
            self._reset(keys, next(iter(values.values())).device)
        stacked = torch.stack([value.detach().double() for value in values.values()])
        new = ~stacked.isfinite().all() & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.first_values = torch.where(new, stacked, self.first_values)
        if found is None and step % self.check_every == 0:
            found = self._collect()
            self._start_read()
        return found

    def check_now(self) -> Divergence | None:
        """Everything observed so far, read synchronously."""
        if self.keys is None:
            return None
        found = self._collect()
        if found is None:
            self._start_read()
            found = self._collect()
        return found

    def _reset(self, keys: tuple[str, ...], device: torch.device) -> None:
        self.keys = keys
        self.first_step = torch.full((), -1, dtype=torch.float64, device=device)
        self.first_values = torch.zeros(len(keys), dtype=torch.float64, device=device)
        self.pending = None

    def _start_read(self) -> None:
        """Sum every rank's first diverged step (+1; 0: none) over ranks and copy them, with
        this rank's first values, to the host without blocking."""
        steps = torch.zeros(self.world.size, dtype=torch.float64, device=self.first_step.device)
        steps[self.world.rank] = self.first_step + 1
        snapshot = torch.cat([sum_over_ranks(steps), self.first_values])
        if snapshot.device.type != "cuda":
            self.pending = (snapshot, None)
            return
        host = torch.empty(snapshot.shape, dtype=snapshot.dtype, pin_memory=True)
        host.copy_(snapshot, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (host, event)

    def _collect(self) -> Divergence | None:
        """The result of the read started last (None if none was), waiting for it if need be;
        the snapshot is in host memory by then, and is read once."""
        if self.pending is None:
            return None
        snapshot, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        read = snapshot.tolist()
        steps, values = read[:self.world.size], read[self.world.size:]
        ranks = [rank for rank, step in enumerate(steps) if step > 0]
        if not ranks:
            return None
        first_step = int(min(steps[rank] for rank in ranks)) - 1
        if self.world.rank not in ranks:
            return Divergence(first_step, ranks, None, None)
        index = next(index for index, value in enumerate(values) if not math.isfinite(value))
        return Divergence(first_step, ranks, self.keys[index], values[index])


__all__ = ["Divergence", "DivergenceWatch"]
