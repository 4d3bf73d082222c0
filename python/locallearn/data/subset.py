"""Choosing a small training subset that keeps the class proportions."""

from __future__ import annotations

import torch
from torch import Tensor

VALIDATION_SEED_OFFSET = 7_919
"""The validation split's draw is offset from the training subset's, so the two differ."""


def stratified_subset(labels: Tensor, size: int, seed: int) -> Tensor:
    """Indices (sorted) of ``size`` examples drawn at random without replacement, each
    class contributing in proportion to its share of ``labels`` (up to rounding)."""
    if not 1 <= size <= len(labels):
        raise ValueError(f"train_subset must be between 1 and {len(labels)} (the training set's size), got {size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    counts = torch.bincount(shuffled)
    # Rank of each example among its class in the shuffled order: taking the smallest
    # (rank + 1/2) / class count interleaves the classes in proportion to their sizes.
    by_class = torch.sort(shuffled, stable=True).indices
    rank = torch.empty_like(by_class)
    class_starts = torch.cumsum(counts, 0) - counts
    rank[by_class] = torch.arange(len(labels)) - class_starts[shuffled[by_class]]
    priority = (rank + 0.5) / counts[shuffled]
    chosen = torch.sort(priority, stable=True).indices[:size]
    return torch.sort(order[chosen]).values


def validation_mask(labels: Tensor, validation: int, seed: int) -> Tensor:
    """Which of the training examples (``labels``) are held out as the validation set: ``validation``
    of them, drawn as `stratified_subset` draws with the seed offset by VALIDATION_SEED_OFFSET."""
    if not 0 < validation < len(labels):
        raise ValueError(f"validation must hold out between 1 and {len(labels) - 1} of the "
                         f"{len(labels)} training examples, got {validation}")
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    held_out[stratified_subset(labels, validation, seed + VALIDATION_SEED_OFFSET)] = True
    return held_out

