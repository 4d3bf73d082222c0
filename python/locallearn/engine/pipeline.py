"""Layer-parallel training (``--layer-parallel K``): the network's blocks split into K
contiguous stages, one per torchrun process, trained as a pipeline.

Local losses remove backward locking (seed 004 §1, seed 001 §1): a block's update needs only
its input, its own head and the labels. So stage s trains its blocks on batch t while stage
s + 1 trains on batch t − 1. What travels, forward only and once per batch, from stage s to
s + 1 (``torch.distributed`` point-to-point: gloo on CPUs, NCCL on GPUs):

- the last block's emitted output, detached: the next stage's input;
- the labels, and the metrics the earlier stages measured on that batch (one float64 vector).

No gradient or error travels backward. The input stage s receives for batch t was computed
by stage s − 1 with its weights after batch t − 1, before its update on t: exactly what a
single process feeds the block (``LocalLosses.train_step`` emits a block's output before
stepping it). So the pipeline computes the single-process updates; only when they happen
differs. Sends and receives are asynchronous and double-buffered (a stage posts the receive
of batch t + 1 before it trains on t and keeps at most two batches' sends in flight);
``sync=True`` waits for every send and receive before going on, for debugging.

Each epoch fills and drains the pipeline; at its end every stage broadcasts what it trained
(its blocks, heads and their optimisers' state) so that every process holds the whole
network: evaluation runs on all of them (each its shard of the test set), and rank 0's
checkpoint is a single-process run's. Data parallelism across replicas of a stage is not
supported: the run has exactly K processes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch import distributed as dist

from locallearn.engine.distributed import World, broadcast_from, broadcast_from_main
from locallearn.rules.local_losses import LocalLosses

REFUSED_RULES = {
    "backprop": "its gradient crosses every stage boundary backward",
    "fa": "its random-feedback error crosses every stage boundary backward",
    "dfa": "every stage needs the output error of the same batch, sent backward from the last stage "
           "(not implemented)",
    "dtp": "each layer's target is computed from the layer above it, backward across stages",
    "dtp-sigma": "each layer's target is computed from the layer above it, backward across stages",
    "sdtp": "each layer's target is computed from the layer above it, backward across stages",
    "ao-sdtp": "each layer's target is computed from the layer above it, backward across stages",
    "ddtp": "each layer's target is computed from the layer above it, backward across stages",
    "lra-e": "its targets are computed top-down, backward across stages",
    "eqprop": "its settling dynamics couple every layer with the layers above it",
    "al": "its components' targets are not yet sent between stages (not implemented)",
}
"""Why each rule outside the local-loss family cannot train layer-parallel."""


def check_rule(rule_name: str) -> None:
    """Refuse, with the reason, a rule that cannot train layer-parallel."""
    from locallearn.rules.local_losses import LOCAL_LOSS_NAMES

    if rule_name in LOCAL_LOSS_NAMES:
        return
    reason = REFUSED_RULES.get(rule_name, "it is not supported")
    raise ValueError(f"--layer-parallel trains the local-loss rules ({', '.join(LOCAL_LOSS_NAMES)}); "
                     f"{rule_name!r} cannot: {reason}")


def split_evenly(costs: Sequence[float], stages: int) -> list[range]:
    """``stages`` contiguous, non-empty ranges of block indices whose largest total cost is
    the smallest possible (the linear-partition dynamic programme)."""
    count = len(costs)
    if not 1 <= stages <= count:
        raise ValueError(f"cannot split {count} blocks into {stages} stages: each stage needs a block")
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    # best[k][i]: the smallest largest-stage cost of blocks[:i] in k stages; cut[k][i]: where the last begins
    best = [[float("inf")] * (count + 1) for _ in range(stages + 1)]
    cut = [[0] * (count + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, count + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    ranges, end = [], count
    for k in range(stages, 0, -1):
        ranges.append(range(cut[k][end], end))
        end = cut[k][end]
    return ranges[::-1]


def split_by_counts(counts: Sequence[int], num_blocks: int) -> list[range]:
    """The ranges of ``--stages``: each stage's number of blocks, in order."""
    if any(count < 1 for count in counts) or sum(counts) != num_blocks:
        raise ValueError(f"--stages {' '.join(map(str, counts))}: give every stage at least one block and "
                         f"{num_blocks} blocks in all (the network has {num_blocks})")
    starts = [sum(counts[:index]) for index in range(len(counts))]
    return [range(start, start + count) for start, count in zip(starts, counts)]


def measure_block_seconds(rule: LocalLosses, x: Tensor, y: Tensor, repeats: int = 3) -> list[float]:
    """Each block's local step (forward, head, local loss, backward; no update), the median
    of ``repeats`` after one warm-up, on the batch ``x, y``; the output layer's is added to
    the last block's. The rule is left as it was (buffers, gradients, RNG)."""
    modules = rule.trainable_modules()
    buffers = {name: tensor.clone() for name, tensor in modules.named_buffers()}
    seconds = []
    with torch.random.fork_rng(devices=[rule.device] if rule.device.type == "cuda" else []):
        h_in = x
        for index, block in enumerate(rule.model.blocks):
            seconds.append(_median_seconds(lambda: rule.block_loss(index, h_in, y)[0].backward(), rule.device,
                                           repeats))
            with torch.no_grad():
                h_in = block.emit(block.features(h_in))
        seconds[-1] += _median_seconds(lambda: rule.output_loss(h_in, y)[0].backward(), rule.device, repeats)
    for optimizer in rule.optimizers():
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, tensor in modules.named_buffers():
            tensor.copy_(buffers[name])
    return seconds


def _median_seconds(step, device: torch.device, repeats: int) -> float:
    times = []
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


class LayerPipeline:
    """This process's stage of a layer-parallel run: which blocks it trains and how batches
    reach it and leave it (module docstring). ``stages``: every stage's block range."""

    in_flight = 2
    """Batches whose sends may be outstanding at once (double buffering)."""

    def __init__(self, rule: LocalLosses, world: World, stages: Sequence[range], sync: bool = False) -> None:
        if len(stages) != world.size:
            raise ValueError(f"{len(stages)} stages need {len(stages)} processes; this run has {world.size}")
        self.rule, self.world, self.stages, self.sync = rule, world, list(stages), sync
        self.stage = world.rank
        self.blocks = self.stages[self.stage]
        self.is_first, self.is_last = self.stage == 0, self.stage == world.size - 1
        self.metric_names = rule.metric_names()
        earlier_blocks = {f"loss/block{index}" for index in range(self.blocks.start)}
        self._carried = [(position, name) for position, name in enumerate(self.metric_names) if name in earlier_blocks]
        self._sends: deque[list[dist.Work]] = deque()

    def describe(self) -> str:
        return ", ".join(f"stage {index + 1}: blocks {blocks.start}–{blocks.stop - 1}"
                         for index, blocks in enumerate(self.stages))

    def epoch(self, loader, generator: torch.Generator) -> Iterator[tuple[dict[str, Tensor], int]]:
        """Train this stage on every batch of one epoch, in order; yields each batch's
        metrics and its number of examples: on the last stage all of the batch's metrics,
        on the others zeros and 0 examples (so that summing over ranks counts each once)."""
        self.rule.model.train()
        self.rule.heads.train()
        zeros = {name: torch.zeros((), device=self.rule.device) for name in self.metric_names}
        batches = (((x, y, {}) for x, y in loader.epoch(generator)) if self.is_first
                   else self._received(len(loader)))
        for index, (x, y, carried) in enumerate(batches):
            metrics = dict(carried)
            h, pending = self.rule.train_blocks(x, y, self.blocks, metrics)
            if self.is_last:
                yield self.rule.train_output(h, y, pending, metrics), len(y)
            else:
                self.rule.step_and_free(pending)
                self._send(h, y, metrics, first=index == 0)
                yield zeros, 0
        self._wait_for_sends(0)

    # ------------------------------------------------------------------ communication

    def _send(self, h: Tensor, y: Tensor, metrics: dict[str, Tensor], first: bool) -> None:
        """Send one batch's output, labels and metrics to the next stage; an epoch's first
        batch is preceded by a header with the output's dtype and shape (every batch of an
        epoch is full, so they all share it)."""
        self._wait_for_sends(self.in_flight - 1)
        extras = self._pack(y, metrics)
        target = self.stage + 1
        if first:
            header = torch.zeros(_HEADER_LENGTH, dtype=torch.int64)
            header[:2 + h.dim()] = torch.tensor([_DTYPES.index(h.dtype), h.dim(), *h.shape])
            self._checked(lambda: dist.send(header.to(self.rule.device), target), target)
        h = h.contiguous()
        works = self._checked(lambda: [dist.isend(h, target), dist.isend(extras, target)], target)
        self._sends.append(works)
        if self.sync:
            self._wait_for_sends(0)

    def _wait_for_sends(self, keep: int) -> None:
        while len(self._sends) > keep:
            works = self._sends.popleft()
            self._checked(lambda: [work.wait() for work in works], self.stage + 1)

    def _received(self, count: int) -> Iterator[tuple[Tensor, Tensor, dict[str, Tensor]]]:
        """``count`` batches from the stage before, each receive posted one batch ahead."""
        source = self.stage - 1
        header = torch.empty(_HEADER_LENGTH, dtype=torch.int64, device=self.rule.device)
        self._checked(lambda: dist.recv(header, source), source)
        header = header.tolist()
        dtype, shape = _DTYPES[header[0]], header[2:2 + header[1]]
        extras_length = shape[0] + len(self.metric_names)

        def post():
            h = torch.empty(shape, dtype=dtype, device=self.rule.device)
            extras = torch.empty(extras_length, dtype=torch.float64, device=self.rule.device)
            return h, extras, self._checked(lambda: [dist.irecv(h, source), dist.irecv(extras, source)], source)

        upcoming = post()
        for index in range(count):
            h, extras, works = upcoming
            self._checked(lambda: [work.wait() for work in works], source)
            more = index + 1 < count
            if more and not self.sync:
                upcoming = post()
            y, metrics = self._unpack(extras, shape[0])
            yield h, y, metrics
            if more and self.sync:
                upcoming = post()

    def _pack(self, y: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        """The labels and every metric name's value (0 for those of later stages), as float64."""
        values = [metrics[name].detach().double().reshape(1) if name in metrics
                  else torch.zeros(1, dtype=torch.float64, device=y.device) for name in self.metric_names]
        return torch.cat([y.double(), *values])

    def _unpack(self, extras: Tensor, batch: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The labels and the earlier stages' block losses from a received :meth:`_pack`."""
        return extras[:batch].long(), {name: extras[batch + position].float() for position, name in self._carried}

    def _checked(self, call, peer: int):
        try:
            return call()
        except RuntimeError as error:
            raise RuntimeError(f"layer-parallel stage {self.stage + 1} (rank {self.stage}) lost stage {peer + 1} "
                               f"(rank {peer}): {error}") from error

    # ------------------------------------------------------------------ gathering

    def gather(self) -> None:
        """Every stage's modules and optimiser state on every process (module docstring)."""
        if not dist.is_initialized():
            return
        for stage in range(len(self.stages)):
            own = stage == self.stage
            state = self.rule.stage_state(self.stages[stage], last=stage == len(self.stages) - 1) if own else None
            state = broadcast_from(stage, state)
            if not own:
                self.rule.load_stage_state(state)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_HEADER_LENGTH = 8  # dtype, number of dimensions, up to 6 sizes


def plan_stages(rule: LocalLosses, world: World, counts: Sequence[int] | None, batch) -> list[range]:
    """The stages of a run: ``counts`` (``--stages``) as given, or split by block step
    times that rank 0 measures on ``batch`` (x, y) and sends to every rank."""
    num_blocks = len(rule.model.blocks)
    if counts:
        return split_by_counts(counts, num_blocks)
    if num_blocks < world.size:
        raise ValueError(f"--layer-parallel {world.size}: {rule.model.name} has {num_blocks} blocks, "
                         f"fewer than the stages")
    seconds = measure_block_seconds(rule, *batch) if world.is_main else None
    return split_evenly(broadcast_from_main(seconds), world.size)
