"""Data-parallel training over the processes torchrun starts (``torch.distributed``: NCCL
on GPUs, gloo on CPUs). Nothing here launches processes or moves bytes itself.

Every rank holds the whole network and trains on its shard of every batch: the epoch's
permutation is the single-process one, cut into global batches of world size × batch
size examples, and rank r takes the r-th slice of each (``DeviceLoader(shard=...)``).
Every optimiser step in the process first averages, across ranks, the gradients it is
about to apply (:class:`GradientAveraging`, a global optimiser pre-step hook): one
mechanism for every rule, because rules update only through optimisers. Rank 0 alone
writes the run directory; the others compute the same reduced metrics.
"""

from __future__ import annotations

import datetime
import gc
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
"""How long a rank waits in a collective for the others before it stops with an error."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (a single process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this rank writes the run directory, metrics and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()


def world_from_environment(environ: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK, or a single process."""
    present = [name for name in TORCHRUN_VARIABLES if name in environ]
    if not present:
        return SINGLE_PROCESS
    if len(present) < len(TORCHRUN_VARIABLES):
        missing = sorted(set(TORCHRUN_VARIABLES) - set(present))
        raise ValueError(f"{', '.join(present)} set but not {', '.join(missing)}: launch with torchrun")
    try:
        rank, size, local_rank = (int(environ[name]) for name in TORCHRUN_VARIABLES)
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ValueError(f"RANK {rank}, WORLD_SIZE {size}, LOCAL_RANK {local_rank} do not describe a rank of a world")
    return World(rank, size, local_rank)


def rank_device(world: World, device: str) -> str:
    """The device this rank trains on: ``cuda`` becomes the rank's own GPU (``cuda:LOCAL_RANK``)."""
    if device != "cuda" or not world.is_distributed:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {world.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                         f"start at most that many processes per node (torchrun --nproc_per_node)")
    return f"cuda:{world.local_rank}"


def join(world: World, device: str) -> None:
    """Join the process group of a distributed run (a no-op for a single process): NCCL
    when the ranks train on GPUs, gloo otherwise."""
    if not world.is_distributed or dist.is_initialized():
        return
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if on_gpu else "gloo", store=_store_of_this_attempt(world), rank=world.rank,
                            world_size=world.size, timeout=COLLECTIVE_TIMEOUT)


def _store_of_this_attempt(world: World) -> dist.Store | None:
    """The rendezvous store for this attempt of the run. torchrun's agent keeps one store
    (at MASTER_ADDR:MASTER_PORT) across the restarts of ``--max-restarts``, so a restarted
    rank could read the addresses its killed predecessors left there and wait on them
    forever; each attempt's keys get a prefix of their own. None: torch's env:// default."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world.size, is_master=False,
                          timeout=COLLECTIVE_TIMEOUT)
    return dist.PrefixStore(f"locallearn/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def leave(finished: bool = True) -> None:
    """Leave the process group; ``finished``: after the other ranks are done too (a rank
    that stops on an error leaves at once, and torchrun stops the others)."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()  # a rank that tears down while another still sends makes that one abort
    dist.destroy_process_group()
    # Free what still holds finished communication (work objects and their tensors) while the
    # interpreter is alive: freed during its finalisation, gloo's threads can abort the process.
    gc.collect()


def broadcast_from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    return broadcast_from(0, value)


def broadcast_from(rank: int, value):
    """Rank ``rank``'s ``value`` (any picklable object) on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=rank)
    return box[0]


def gather_to_all(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """``tensor`` summed over ranks, in place (unchanged in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def broadcast_module_state(module: nn.Module) -> None:
    """Every parameter and buffer of ``module`` set to rank 0's, in place."""
    if not dist.is_initialized():
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def average_in_place(tensors: list[Tensor], world_size: int) -> None:
    """Each tensor replaced by its mean over ranks, with one all-reduce per dtype."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in group])
        dist.all_reduce(flat)
        _unflatten_into(flat, group, world_size)


def _unflatten_into(flat: Tensor, tensors: list[Tensor], world_size: int) -> None:
    """Copy ``flat``, the sum over ranks of ``tensors`` laid end to end, back into them as a mean."""
    flat.div_(world_size)
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


@dataclass
class _PendingAverage:
    """One optimiser's gradients of the current step: which have arrived, and the all-reduce
    under way since the last arrived."""

    parameters: list[Tensor]  # the optimiser's trainable ones, in its order
    arrived: set[int] = field(default_factory=set)  # ids of the parameters whose gradient is in
    flat: Tensor | None = None
    work: dist.Work | None = None
    stale: bool = False  # a gradient accumulated again after the all-reduce started


class GradientAveraging:
    """While active, every ``torch.optim.Optimizer.step`` in this process applies the mean
    over ranks of the gradients it is about to apply. With every rank's loss a mean over its
    shard of the batch, the step is the one a single process would take on the whole batch.

    The all-reduce of an optimiser's gradients starts, asynchronously, as soon as the last of
    them has been accumulated by autograd (post-accumulate-grad hooks), and its step waits
    for it: a rule that computes the next block before stepping this one (the local-loss
    rules) hides the communication behind that computation. Where it cannot start early (the
    optimiser's first step, gradients a rule sets itself as LRA-E and EqProp do, a gradient
    accumulated twice), the step all-reduces then. ``waited_seconds`` counts the time steps
    spent waiting for communication. Use as a context manager; a no-op in a single process."""

    start_early = True
    """False: every all-reduce starts at its step (benchmarks/bench_scaling.py --late measures the difference)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.waited_seconds = 0.0
        self.started_early = self.started_late = 0
        self._pending: dict[torch.optim.Optimizer, _PendingAverage] = {}
        self._owner: dict[int, _PendingAverage] = {}  # by parameter id
        self._handles: list = []

    def _before_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        started = time.perf_counter()
        pending = self._pending.get(optimizer)
        if pending is None:
            pending = self._pending[optimizer] = self._follow(optimizer)
        with_gradients = [parameter for parameter in _parameters(optimizer) if parameter.grad is not None]
        if pending.work is not None:
            pending.work.wait()
        early = pending.work is not None and not pending.stale and _same(with_gradients, pending.parameters)
        if early:
            _unflatten_into(pending.flat, [parameter.grad for parameter in with_gradients], self.world.size)
            self.started_early += 1
        elif with_gradients:
            average_in_place([parameter.grad for parameter in with_gradients], self.world.size)
            self.started_late += 1
        pending.arrived, pending.flat, pending.work, pending.stale = set(), None, None, False
        self.waited_seconds += time.perf_counter() - started

    def _follow(self, optimizer: torch.optim.Optimizer) -> _PendingAverage:
        """Hook every trainable parameter of ``optimizer`` so that its all-reduce can start early."""
        pending = _PendingAverage([parameter for parameter in _parameters(optimizer) if parameter.requires_grad])
        for parameter in pending.parameters:
            self._owner[id(parameter)] = pending
            self._handles.append(parameter.register_post_accumulate_grad_hook(self._arrived))
        return pending

    def _arrived(self, parameter: Tensor) -> None:
        if not self.start_early:
            return
        pending = self._owner[id(parameter)]
        if id(parameter) in pending.arrived or pending.work is not None:
            pending.stale = True
            return
        pending.arrived.add(id(parameter))
        if len(pending.arrived) == len(pending.parameters) and len({p.grad.dtype for p in pending.parameters}) == 1:
            pending.flat = torch.cat([p.grad.reshape(-1) for p in pending.parameters])
            pending.work = dist.all_reduce(pending.flat, async_op=True)

    def __enter__(self) -> GradientAveraging:
        if self.world.is_distributed:
            self._handles.append(register_optimizer_step_pre_hook(self._before_step))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for pending in self._pending.values():
            if pending.work is not None:
                pending.work.wait()
        self._pending.clear()
        self._owner.clear()


def _parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def _same(first: list[Tensor], second: list[Tensor]) -> bool:
    return len(first) == len(second) and all(a is b for a, b in zip(first, second))


__all__ = ["COLLECTIVE_TIMEOUT", "GradientAveraging", "SINGLE_PROCESS", "World", "average_in_place",
           "broadcast_from_main", "broadcast_module_state", "gather_to_all", "join", "leave", "rank_device",
           "sum_over_ranks", "world_from_environment"]
