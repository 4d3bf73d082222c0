"""Inter- and intra-class distances of a representation (seed 001 §3.2, Table 4).

Seed 001 §3.2: d_k^intra is "the average distance between any two data points in class k";
the intra-class distance is the mean of d_k^intra over the classes; the inter-class distance
is "the average distance between the centroids of the classes" (over all pairs of distinct
classes); the ratio is inter / intra (Table 4's "Inter:Intra ratio", e.g. 39.36 / 67.97 =
0.58), larger meaning better separated classes. Distances are Euclidean, between distinct
points (i ≠ j), computed on the features' device in float64 on CPU or for float64 input and
float32 elsewhere, in blocks of rows so that memory stays O(block × class size).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from locallearn.analysis.cka import _feature_matrix

__all__ = ["ClassSeparation", "class_separation"]

_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class ClassSeparation:
    """Seed 001 §3.2: inter-class distance, intra-class distance, their ratio inter / intra,
    and d_k^intra for every class label k."""

    inter: float
    intra: float
    ratio: float
    per_class_intra: dict[int, float]


def class_separation(features: Tensor, labels: Tensor) -> ClassSeparation:
    """Inter- and intra-class Euclidean distances of features (N, ...), flattened, with integer
    labels (N,): at least 2 classes, each with at least 2 examples. The ratio is 0 when the
    class centroids coincide and infinite (with a warning) when only the classes collapse."""
    points = _feature_matrix(features, "features", min_examples=1)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class labels, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.is_complex():
        raise TypeError(f"labels must hold integer class labels, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != points.shape[0]:
        raise ValueError(f"labels must have shape (N,) = ({points.shape[0]},) to match features, got "
                         f"{tuple(labels.shape)}")
    labels = labels.to(points.device)
    classes, counts = torch.unique(labels, return_counts=True)
    if classes.numel() < 2:
        raise ValueError(f"class separation needs at least 2 classes, got {classes.numel()}")
    if bool((counts < 2).any()):
        small = classes[counts < 2].tolist()
        raise ValueError(f"every class needs at least 2 examples for an intra-class distance; classes {small[:10]} "
                         f"have 1")
    order = torch.argsort(labels, stable=True)
    per_class = points[order].split(counts.tolist())
    per_class_intra = {int(label): _mean_pairwise_distance(members)
                       for label, members in zip(classes.tolist(), per_class)}
    centroids = torch.stack([members.mean(dim=0) for members in per_class])
    inter = _mean_pairwise_distance(centroids)
    intra = sum(per_class_intra.values()) / len(per_class_intra)
    if inter == 0:
        ratio = 0.0
    elif intra == 0:
        warnings.warn("every class is a single point (intra-class distance 0): the inter:intra ratio is infinite",
                      RuntimeWarning, stacklevel=2)
        ratio = math.inf
    else:
        ratio = inter / intra
    return ClassSeparation(inter=inter, intra=intra, ratio=ratio, per_class_intra=per_class_intra)


def _mean_pairwise_distance(points: Tensor) -> float:
    """Mean Euclidean distance over the n(n-1) ordered pairs of distinct rows of points."""
    n = points.shape[0]
    centred = points - points.mean(dim=0, keepdim=True)
    squared_norms = (centred * centred).sum(dim=1)
    total = centred.new_zeros(())
    for start in range(0, n, _BLOCK_ROWS):
        block = centred[start:start + _BLOCK_ROWS]
        rows = torch.arange(block.shape[0], device=points.device)
        squared = squared_norms[start:start + _BLOCK_ROWS, None] + squared_norms[None, :] - 2 * block @ centred.T
        squared[rows, start + rows] = 0
        total += squared.clamp_min_(0).sqrt_().sum()
    return float(total / (n * (n - 1)))
