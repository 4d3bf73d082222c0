"""Layer-parallel training (``--layer-parallel K``): the network split into K contiguous
stages of units (hidden blocks; AL's components), one per torchrun process, trained as a
pipeline.

Local learning removes backward locking (seed 004 §1, seed 001 §1): a unit's update needs
only its input, what it trains beside it and the labels. So stage s trains its units on
batch t while stage s + 1 trains on batch t − 1. What travels forward, once per batch, from
stage s to s + 1 (``torch.distributed`` point-to-point: gloo on CPUs, NCCL on GPUs):

- what the last unit emits, detached: the local losses' and DFA's block output; AL's
  (sᵢ, tᵢ), the component's output and its target (seed 001 eqs. (1), (2));
- the labels, and the metrics the earlier stages measured on that batch (one float64 vector).

For the local losses and AL nothing travels backward, and the pipeline computes the
single-process updates: the input stage s receives for batch t was computed by stage s − 1
with its weights after batch t − 1, before its update on t, exactly what one process feeds
the unit (each rule emits a unit's output before stepping it); only when updates happen differs.

DFA (seed 002 §2) also sends backward: the last stage sends the output error e_t = ∂L/∂logits
of batch t (batch × classes) to every earlier stage, which projects it onto its blocks'
features (e_t B_ℓ). Stage s < K − 1 learns from e_t D = K − 1 − s batches after it sent batch t
on: after its forward of batch t + D. Meanwhile it has stepped D times, so it keeps batch t's
graph with the weights (and batch-norm statistics) that computed it (weight stashing:
autograd saves copies of them, not the live tensors); its update on t is the single-process
DFA gradient of batch t at the weights of batch t, applied D steps late. With ``sync=True``,
D = 0: each stage waits for the error of the batch it just sent, and the updates equal one
process's.

Sends and receives are asynchronous and double-buffered (a stage posts the receive of batch
t + 1 before it trains on t and keeps at most two batches' sends in flight); ``sync=True``
waits for every send and receive before going on, for debugging.

Each epoch fills and drains the pipeline; at its end every stage broadcasts what it trained
(its units' and the output layer's modules, and their parameters' optimiser state) so that
every process holds the whole network: evaluation runs on all of them (each its shard of the
test set), and rank 0's checkpoint is a single-process run's. Data parallelism across
replicas of a stage is not supported: the run has exactly K processes.

A rule trains layer-parallel when it has these methods (:data:`PIPELINED_RULES`):

- ``stage_units()``: the modules each unit trains, in order; ``stage_output_modules()``: those
  only the last stage trains (the output layer); ``stage_unit`` (class attribute): "block" or
  "component", for messages;
- ``stage_metric_names()``: the keys, in order, of ``train_last_stage``'s values;
- ``train_stage(inputs, y, units, metrics) -> (outputs, pending)``: train the ``units`` (a range)
  of a stage that is not the last on ``inputs`` (``(x,)`` on the first stage), adding their
  losses to ``metrics``; ``pending`` is None, or what ``learn_from_error(pending, error)`` needs;
- ``train_last_stage(inputs, y, units, metrics, send_error)``: the last stage's step, returning
  the step's values; a rule that learns from the output error passes it to ``send_error``
  (when given) before it learns from it itself;
- ``learn_from_error(pending, error)``, only in a rule that learns from the output error (DFA).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import deque
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch import distributed as dist

from locallearn.engine.distributed import World, broadcast_from, broadcast_from_main
from locallearn.rules.base import Rule
from locallearn.rules.local_losses import LOCAL_LOSS_NAMES

PIPELINED_RULES = (*LOCAL_LOSS_NAMES, "dfa", "al")
"""The rules that train layer-parallel."""

REFUSED_RULES = {
    "backprop": "its gradient crosses every stage boundary backward",
    "fa": "its random-feedback error crosses every stage boundary backward",
    "dtp": "each layer's target is computed from the layer above it, backward across stages",
    "dtp-sigma": "each layer's target is computed from the layer above it, backward across stages",
    "sdtp": "each layer's target is computed from the layer above it, backward across stages",
    "ao-sdtp": "each layer's target is computed from the layer above it, backward across stages",
    "ddtp": "each layer's target is computed from the layer above it, backward across stages",
    "lra-e": "its targets are computed top-down, backward across stages",
    "eqprop": "its settling dynamics couple every layer with the layers above it",
}
"""Why each other rule cannot train layer-parallel."""


def check_rule(rule_name: str) -> None:
    """Refuse, with the reason, a rule that cannot train layer-parallel."""
    if rule_name in PIPELINED_RULES:
        return
    reason = REFUSED_RULES.get(rule_name, "it is not supported")
    raise ValueError(f"--layer-parallel trains the local rules ({', '.join(PIPELINED_RULES)}); "
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


def split_by_counts(counts: Sequence[int], num_units: int, unit: str = "block") -> list[range]:
    """The ranges of ``--stages``: each stage's number of units, in order."""
    if any(count < 1 for count in counts) or sum(counts) != num_units:
        raise ValueError(f"--stages {' '.join(map(str, counts))}: give every stage at least one {unit} and "
                         f"{num_units} {unit}s in all (the network has {num_units})")
    starts = [sum(counts[:index]) for index in range(len(counts))]
    return [range(start, start + count) for start, count in zip(starts, counts)]


def measure_unit_seconds(rule: Rule, x: Tensor, y: Tensor, repeats: int = 3) -> list[float]:
    """Each unit's training step as one stage of its own (forward, local loss, backward,
    update; the output layer's with the last unit's), the median of ``repeats`` after one
    warm-up, on the batch ``x, y``. The rule is left as it was (weights, buffers, optimiser
    state, gradients, RNG)."""
    modules = rule.trainable_modules()
    saved = copy.deepcopy(modules.state_dict()), [copy.deepcopy(o.state_dict()) for o in rule.optimizers()]
    last = len(rule.stage_units()) - 1
    with torch.random.fork_rng(devices=[rule.device] if rule.device.type == "cuda" else []):
        inputs, errors, metrics = [(x,)], [], {}  # each unit's input; the output error (DFA); the losses
        pendings = []
        for index in range(last):
            outputs, pending = rule.train_stage(inputs[-1], y, range(index, index + 1), metrics)
            inputs.append(outputs)
            pendings.append(pending)
        rule.train_last_stage(inputs[-1], y, range(last, last + 1), dict(metrics), errors.append)
        for pending in filter(None, pendings):
            rule.learn_from_error(pending, errors[0])

        def train(index: int) -> None:
            outputs, pending = rule.train_stage(inputs[index], y, range(index, index + 1), {})
            if pending is not None:
                rule.learn_from_error(pending, errors[0])

        seconds = [_median_seconds(lambda: train(index), rule.device, repeats) for index in range(last)]
        seconds.append(_median_seconds(
            lambda: rule.train_last_stage(inputs[-1], y, range(last, last + 1), dict(metrics), None), rule.device,
            repeats))
    modules.load_state_dict(saved[0])
    for optimizer, state in zip(rule.optimizers(), saved[1]):
        optimizer.load_state_dict(state)
        optimizer.zero_grad(set_to_none=True)
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
    """This process's stage of a layer-parallel run: which units it trains and how batches
    (and, for DFA, output errors) reach it and leave it (module docstring). ``stages``:
    every stage's unit range."""

    in_flight = 2
    """Batches whose sends may be outstanding at once (double buffering)."""

    def __init__(self, rule: Rule, world: World, stages: Sequence[range], sync: bool = False) -> None:
        if len(stages) != world.size:
            raise ValueError(f"{len(stages)} stages need {len(stages)} processes; this run has {world.size}")
        self.rule, self.world, self.stages, self.sync = rule, world, list(stages), sync
        self.stage = world.rank
        self.units = self.stages[self.stage]
        self.is_first, self.is_last = self.stage == 0, self.stage == world.size - 1
        learns_late = hasattr(rule, "learn_from_error") and not sync
        self.error_delay = world.size - 1 - self.stage if learns_late else 0
        """Batches between sending batch t on and learning from its output error (DFA)."""
        self.metric_names = rule.stage_metric_names()
        self._live_tensors = ({id(tensor) for module in self._stage_modules(self.stage)
                               for tensor in (*module.parameters(), *module.buffers())}
                              if self.error_delay else set())  # what _stashed copies (loading state keeps them)
        self._sends: deque[list[tuple[dist.Work, int, Tensor]]] = deque()  # per batch: (send, destination, tensor)

    def describe(self) -> str:
        unit = self.rule.stage_unit
        return ", ".join(f"stage {index + 1}: {unit}s {units.start}–{units.stop - 1}"
                         for index, units in enumerate(self.stages))

    def epoch(self, loader, generator: torch.Generator) -> Iterator[tuple[dict[str, Tensor], int]]:
        """Train this stage on every batch of one epoch, in order; yields each batch's
        metrics and its number of examples: on the last stage all of the batch's metrics,
        on the others zeros and 0 examples (so that summing over ranks counts each once)."""
        self.rule.trainable_modules().train()
        zeros = {name: torch.zeros((), device=self.rule.device) for name in self.metric_names}
        batches = (((x,), y, {}) for x, y in loader.epoch(generator)) if self.is_first else self._received(len(loader))
        errors, waiting = None, deque()
        for index, (inputs, y, carried) in enumerate(batches):
            metrics = dict(carried)
            if self.is_last:
                yield self.rule.train_last_stage(inputs, y, self.units, metrics,
                                                 lambda error: self._send_error(error, first=index == 0)), len(y)
                continue
            with self._stashed() if self.error_delay else contextlib.nullcontext():
                outputs, pending = self.rule.train_stage(inputs, y, self.units, metrics)
            self._send(outputs, y, metrics, first=index == 0)
            if pending is not None:
                if errors is None:
                    errors = self._received_errors(len(loader))
                waiting.append(pending)
                while len(waiting) > self.error_delay:
                    self.rule.learn_from_error(waiting.popleft(), next(errors))
            yield zeros, 0
        while waiting:
            self.rule.learn_from_error(waiting.popleft(), next(errors))
        self._wait_for_sends(0)

    def _stashed(self):
        """Autograd saves copies of this stage's parameters and buffers, not the live tensors
        that later steps update in place (weight stashing, for a delayed error)."""
        live = self._live_tensors
        return torch.autograd.graph.saved_tensors_hooks(
            lambda tensor: tensor.clone() if id(tensor) in live else tensor, lambda tensor: tensor)

    # ------------------------------------------------------------------ communication

    def _send(self, outputs: tuple[Tensor, ...], y: Tensor, metrics: dict[str, Tensor], first: bool) -> None:
        """Send one batch's outputs, labels and metrics to the next stage; an epoch's first
        batch is preceded by a header with the outputs' dtypes and shapes (every batch of an
        epoch is full, so they all share them)."""
        target = self.stage + 1
        tensors = [*(output.contiguous() for output in outputs), self._pack(y, metrics)]
        self._post_sends(tensors[:-1] if first else None, [(tensor, target) for tensor in tensors])

    def _send_error(self, error: Tensor, first: bool) -> None:
        """Send the output error of one batch to every earlier stage (DFA)."""
        error = error.detach().contiguous()
        self._post_sends([error] if first else None, [(error, stage) for stage in range(self.stage)])

    def _post_sends(self, header_of: list[Tensor] | None, messages: list[tuple[Tensor, int]]) -> None:
        """Post ``messages`` (tensor, destination rank) once fewer than :attr:`in_flight`
        batches' sends are outstanding; with ``header_of``, each destination is first sent a
        header describing those tensors. Nothing here waits for a receiver: a stage may ask
        for the header only batches later (DFA's delayed errors)."""
        self._wait_for_sends(self.in_flight - 1)
        if header_of is not None:
            header = _header(header_of).to(self.rule.device)
            messages = [(header, target) for target in sorted({target for _, target in messages})] + messages
        self._sends.append([(self._checked(lambda: dist.isend(tensor, target), target), target, tensor)
                            for tensor, target in messages])  # each tensor kept until its send is done
        if self.sync:
            self._wait_for_sends(0)

    def _wait_for_sends(self, keep: int) -> None:
        while len(self._sends) > keep:
            for work, target, _ in self._sends.popleft():
                self._checked(work.wait, target)

    def _received(self, count: int) -> Iterator[tuple[tuple[Tensor, ...], Tensor, dict[str, Tensor]]]:
        """``count`` batches from the stage before, each receive posted one batch ahead."""
        source = self.stage - 1
        specs = self._received_header(source)
        batch = specs[0][1][0]
        specs.append((torch.float64, [batch + 2 * len(self.metric_names)]))
        for tensors in self._receive_ahead(source, specs, count, ahead=0 if self.sync else 1):
            y, metrics = self._unpack(tensors[-1], batch)
            yield tuple(tensors[:-1]), y, metrics

    def _received_errors(self, count: int) -> Iterator[Tensor]:
        """The last stage's output error of each of ``count`` batches, posted ahead."""
        source = self.world.size - 1
        specs = self._received_header(source)
        for tensors in self._receive_ahead(source, specs, count, ahead=self.error_delay + 1):
            yield tensors[0]

    def _received_header(self, source: int) -> list[tuple[torch.dtype, list[int]]]:
        header = torch.empty(_MAX_TENSORS, _HEADER_LENGTH, dtype=torch.int64, device=self.rule.device)
        self._checked(lambda: dist.recv(header, source), source)
        return [(_DTYPES[row[0] - 1], row[2:2 + row[1]]) for row in header.tolist() if row[0]]

    def _receive_ahead(self, source: int, specs, count: int, ahead: int) -> Iterator[list[Tensor]]:
        """``count`` messages of tensors shaped as ``specs`` from ``source``, in order. The
        receives of the next ``ahead`` messages are posted before one is handed on; with
        ``ahead`` 0 the next is posted once the caller is done with it."""
        def post():
            tensors = [torch.empty(shape, dtype=dtype, device=self.rule.device) for dtype, shape in specs]
            return tensors, self._checked(lambda: [dist.irecv(tensor, source) for tensor in tensors], source)

        posted = deque(post() for _ in range(min(max(ahead, 1), count)))
        for index in range(count):
            tensors, works = posted.popleft()
            self._checked(lambda: [work.wait() for work in works], source)
            while len(posted) < ahead and index + 1 + len(posted) < count:
                posted.append(post())
            yield tensors
            if not posted and index + 1 < count:
                posted.append(post())

    def _pack(self, y: Tensor, metrics: dict[str, Tensor]) -> Tensor:
        """The labels, every metric's value (0 where this and the earlier stages have none)
        and whether it has one, as float64."""
        names = self.metric_names
        zero = torch.zeros(1, dtype=torch.float64, device=y.device)
        values = [metrics[name].detach().double().reshape(1) if name in metrics else zero for name in names]
        present = torch.tensor([float(name in metrics) for name in names], dtype=torch.float64, device=y.device)
        return torch.cat([y.double(), *values, present])

    def _unpack(self, extras: Tensor, batch: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The labels and the earlier stages' metrics from a received :meth:`_pack`."""
        count = len(self.metric_names)
        values, present = extras[batch:batch + count], extras[batch + count:].tolist()
        return extras[:batch].long(), {name: values[position].float()
                                       for position, name in enumerate(self.metric_names) if present[position]}

    def _checked(self, call, peer: int):
        try:
            return call()
        except RuntimeError as error:
            raise RuntimeError(f"layer-parallel stage {self.stage + 1} (rank {self.stage}) lost stage {peer + 1} "
                               f"(rank {peer}): {error}") from error

    # ------------------------------------------------------------------ gathering

    def gather(self) -> None:
        """Every stage's modules and their parameters' optimiser state on every process
        (module docstring)."""
        if not dist.is_initialized():
            return
        for stage in range(len(self.stages)):
            own = stage == self.stage
            state = broadcast_from(stage, self._stage_state(stage) if own else None)
            if not own:
                self._load_stage_state(stage, state)

    def _stage_modules(self, stage: int) -> list[nn.Module]:
        units = self.rule.stage_units()
        modules = [module for index in self.stages[stage] for module in units[index]]
        return modules + (self.rule.stage_output_modules() if stage == len(self.stages) - 1 else [])

    def _owned_indices(self, stage: int, optimizer: torch.optim.Optimizer) -> list[int]:
        """The positions, in ``optimizer.state_dict()``, of the parameters ``stage`` trains."""
        owned = {id(parameter) for module in self._stage_modules(stage) for parameter in module.parameters()}
        parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        return [index for index, parameter in enumerate(parameters) if id(parameter) in owned]

    def _stage_state(self, stage: int) -> dict:
        optimizers = []
        for optimizer in self.rule.optimizers():
            state = optimizer.state_dict()["state"]
            optimizers.append({index: state[index] for index in self._owned_indices(stage, optimizer) if index in state})
        return _on_cpu({"modules": [module.state_dict() for module in self._stage_modules(stage)],
                        "optimizers": optimizers})

    def _load_stage_state(self, stage: int, state: dict) -> None:
        for module, module_state in zip(self._stage_modules(stage), state["modules"], strict=True):
            module.load_state_dict(module_state)
        for optimizer, owned in zip(self.rule.optimizers(), state["optimizers"], strict=True):
            if owned:
                merged = optimizer.state_dict()
                merged["state"].update(owned)
                optimizer.load_state_dict(merged)  # casts each value to its parameter's device


def _on_cpu(value):
    """``value`` (nested dicts, lists and tuples) with every tensor copied to the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_MAX_TENSORS, _HEADER_LENGTH = 4, 8  # per tensor: dtype + 1, number of dimensions, up to 6 sizes


def _header(tensors: Sequence[Tensor]) -> Tensor:
    """The dtypes and shapes of up to :data:`_MAX_TENSORS` tensors, one row each."""
    header = torch.zeros(_MAX_TENSORS, _HEADER_LENGTH, dtype=torch.int64)
    for row, tensor in zip(header, tensors, strict=False):
        row[:2 + tensor.dim()] = torch.tensor([_DTYPES.index(tensor.dtype) + 1, tensor.dim(), *tensor.shape])
    return header


def plan_stages(rule: Rule, world: World, counts: Sequence[int] | None, batch) -> list[range]:
    """The stages of a run: ``counts`` (``--stages``) as given, or split by unit step
    times that rank 0 measures on ``batch`` (x, y) and sends to every rank."""
    num_units, unit = len(rule.stage_units()), rule.stage_unit
    if counts:
        return split_by_counts(counts, num_units, unit)
    if num_units < world.size:
        raise ValueError(f"--layer-parallel {world.size}: {rule.model.name} has {num_units} {unit}s, "
                         f"fewer than the stages")
    seconds = measure_unit_seconds(rule, *batch) if world.is_main else None
    return split_evenly(broadcast_from_main(seconds), world.size)
