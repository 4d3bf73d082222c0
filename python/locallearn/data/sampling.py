"""The order in which an epoch visits the training examples."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor


def batch_sizes(count: int, batch_size: int, drop_last: bool) -> list[int]:
    """Sizes of an epoch's batches: full ones, then the remainder unless ``drop_last``."""
    sizes = [batch_size] * (count // batch_size)
    if count % batch_size and not drop_last:
        sizes.append(count % batch_size)
    return sizes


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` = (rank, ranks) of a data-parallel run, checked."""
    rank, ranks = shard
    if not isinstance(ranks, int) or ranks < 1 or not isinstance(rank, int) or not 0 <= rank < ranks:
        raise ValueError(f"shard must be (rank, ranks) with 0 <= rank < ranks, got {shard!r}")
    return rank, ranks


def rank_slices(sizes: Sequence[int], rank: int, ranks: int, first_batch: int = 0) -> Iterator[slice]:
    """The rows of the epoch's order that ``rank`` of ``ranks`` takes from each batch of ``sizes``,
    from batch ``first_batch`` on: the rank-th of ``ranks`` near-equal consecutive parts of the
    batch. A batch smaller than the number of ranks leaves some ranks nothing; those are skipped."""
    start = sum(sizes[:first_batch])
    for size in sizes[first_batch:]:
        share, extra = divmod(size, ranks)
        first = start + rank * share + min(rank, extra)
        rows = slice(first, first + share + (rank < extra))
        start += size
        if rows.stop > rows.start:
            yield rows


def class_restricted_order(
    labels: Tensor, sizes: Sequence[int], classes_per_batch: int, generator: torch.Generator
) -> Tensor:
    """Indices (CPU) for batches of ``sizes`` that each hold at most ``classes_per_batch``
    classes, the order Nøkland & Eidnes (2019) train with.

    Each class's examples are put in a random order. For each batch, k =
    ``classes_per_batch`` distinct classes are drawn, each with probability
    proportional to how many of its examples this epoch has not used yet (classes
    with none left come last, so they are drawn only when fewer than k classes have
    any left). The batch is split among them as evenly as their unused examples
    allow, and each takes its next unused examples. Only when the k classes together
    have fewer unused examples than the batch needs does a class start again from
    the beginning of its order: so every example is used once per epoch except, near
    the end of the epoch, for a few repeats (and the examples they displace). A
    batch's examples are grouped by class. The random numbers are drawn on
    ``generator``'s device and the order computed on the CPU."""
    classes, counts = np.unique(labels.cpu().numpy(), return_counts=True)
    permutation = torch.randperm(len(labels), generator=generator, device=generator.device).cpu()
    uniforms = torch.rand(len(sizes), len(classes), generator=generator, device=generator.device, dtype=torch.float64)
    log_uniforms = uniforms.cpu().log().numpy()
    shuffled_labels = labels.cpu()[permutation]
    pool = permutation[torch.sort(shuffled_labels, stable=True).indices].numpy()  # grouped by class
    starts = np.cumsum(counts) - counts
    used = np.zeros(len(classes), dtype=np.int64)
    batches = []
    for batch, size in enumerate(sizes):
        unused = np.maximum(counts - used, 0)
        # Weighted sampling without replacement (Efraimidis & Spirakis): the k largest log(u) / weight.
        keys = log_uniforms[batch] / np.where(unused > 0, unused, 1e-9)
        chosen = np.argsort(-keys, kind="stable")[:classes_per_batch]
        for label, quota in zip(chosen, _even_split(size, unused[chosen])):
            positions = (used[label] + np.arange(quota)) % counts[label]
            batches.append(pool[starts[label] + positions])
            used[label] += quota
    return torch.from_numpy(np.concatenate(batches))


def _even_split(total: int, capacities: np.ndarray) -> np.ndarray:
    """``total`` split into parts as equal as possible with no part above its capacity
    (water-filling); whatever the capacities cannot hold is then spread evenly."""
    parts = np.zeros(len(capacities), dtype=np.int64)
    left = total
    for position, index in enumerate(np.argsort(capacities, kind="stable")):
        parts[index] = min(capacities[index], left // (len(capacities) - position))
        left -= parts[index]
    parts += left // len(parts) + (np.arange(len(parts)) < left % len(parts))
    return parts
