"""Representational similarity analysis (RSA) between layer representations.

Seed 000 §III-B, after Kriegeskorte, Mur & Bandettini (2008): (1) a layer's representational
dissimilarity matrix (RDM) over the N stimuli holds, for every pair of stimuli, one minus the
Pearson correlation between their activation patterns (`rdm`); (2) two layers are compared by
the correlation between the upper triangles (i < j, diagonal excluded) of their RDMs: Spearman
(ranks, ties averaged) by default, or Pearson (`rsa`). `rsa_matrix` compares every pair of
layers with one matmul of the stacked, standardised RDM triangles.

Precision follows `locallearn.analysis.cka`: float64 on CPU or for float64 input, float32 on
other devices, computed on the activations' device.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from locallearn.analysis.cka import _feature_matrix, _layer_features, _same_examples

__all__ = ["rdm", "rsa", "rsa_matrix"]

Metric = Literal["correlation", "euclidean"]
Method = Literal["spearman", "pearson"]
METRICS = ("correlation", "euclidean")
METHODS = ("spearman", "pearson")


def rdm(x: Tensor, metric: Metric = "correlation") -> Tensor:
    """The (N, N) RDM of the N stimuli of x (shape (N, ...), flattened): 1 - Pearson correlation
    between the activation patterns of stimuli i and j (seed 000 §III-B), or their Euclidean
    distance. Symmetric, zero on the diagonal. A constant activation pattern has no correlation:
    its distance to every other stimulus is set to 1 (correlation 0), with a warning."""
    _check_options(metric, "pearson")
    return _rdm(_feature_matrix(x, "x", min_examples=1), metric, "x")


def rsa(x: Tensor, y: Tensor, *, method: Method = "spearman", metric: Metric = "correlation") -> float:
    """Correlation (Spearman or Pearson) between the upper triangles of the RDMs of two
    representations of the same N >= 3 stimuli (seed 000 §III-B)."""
    _check_options(metric, method)
    layers = _same_examples([("x", _feature_matrix(x, "x", min_examples=3)),
                             ("y", _feature_matrix(y, "y", min_examples=3))])
    return float(_similarity(layers[:1], layers[1:], metric, method)[0, 0])


def rsa_matrix(acts_a: Sequence[Tensor], acts_b: Sequence[Tensor] | None = None, *, method: Method = "spearman",
               metric: Metric = "correlation") -> Tensor:
    """RSA between every layer of acts_a and every layer of acts_b (or of acts_a itself when
    acts_b is None): a (La, Lb) tensor on the activations' device. Each activation is (N, ...)
    for the same N >= 3 stimuli. An RDM whose upper triangle is constant has no correlation:
    its RSA is reported as 0, with a warning."""
    _check_options(metric, method)
    layers_a = _layer_features(acts_a, "acts_a", min_examples=3)
    layers_b = None if acts_b is None else _layer_features(acts_b, "acts_b", min_examples=3)
    layers = _same_examples(layers_a + (layers_b or []))
    return _similarity(layers[:len(layers_a)], None if layers_b is None else layers[len(layers_a):], metric, method)


def _check_options(metric: str, method: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _similarity(layers_a: list[tuple[str, Tensor]], layers_b: list[tuple[str, Tensor]] | None, metric: str,
                method: str) -> Tensor:
    triangles_a = _standardised_triangles(layers_a, metric, method)
    triangles_b = triangles_a if layers_b is None else _standardised_triangles(layers_b, metric, method)
    return triangles_a @ triangles_b.T


def _rdm(features: Tensor, metric: str, name: str) -> Tensor:
    if metric == "euclidean":
        centred = features - features.mean(dim=0, keepdim=True)
        squared_norms = (centred * centred).sum(dim=1)
        squared_distances = squared_norms[:, None] + squared_norms[None, :] - 2 * centred @ centred.T
        dissimilarity = squared_distances.clamp_min_(0).sqrt_()
    else:
        if features.shape[1] < 2:
            raise ValueError(f"{name} has {features.shape[1]} feature(s) per stimulus; the correlation between two "
                             f"activation patterns needs at least 2 (use metric='euclidean')")
        centred = features - features.mean(dim=1, keepdim=True)
        norms = centred.norm(dim=1, keepdim=True)
        constant = features.amax(dim=1) == features.amin(dim=1)
        if bool(constant.any()):
            rows = constant.nonzero().flatten()
            warnings.warn(f"RDM of {name}: {rows.numel()} stimuli (e.g. rows {rows[:5].tolist()}) have constant "
                          f"activation patterns with no correlation; their distance to every other stimulus is set "
                          f"to 1", RuntimeWarning, stacklevel=3)
        patterns = torch.where(constant[:, None], 0, centred / torch.where(constant[:, None], 1, norms))
        dissimilarity = (1 - patterns @ patterns.T).clamp_(0, 2)
    return ((dissimilarity + dissimilarity.T) / 2).fill_diagonal_(0)  # exactly symmetric despite rounding


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks, tied values getting the average of their ranks (as scipy.stats.rankdata)."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    average_rank = counts.cumsum(dim=0) - (counts - 1) / 2
    return average_rank.to(values.dtype)[inverse]


_CONSTANT_SPREAD = 1024
"""An RDM whose entries differ by no more than this many machine epsilons of its largest
entry is constant: equal distances computed through the Gram matrix differ by rounding,
and ranking them (Spearman) would turn that rounding into a pattern."""


def _standardised_triangles(layers: list[tuple[str, Tensor]], metric: str, method: str) -> Tensor:
    """(L, N(N-1)/2): each layer's RDM upper triangle (ranked for Spearman), centred and of unit
    norm, so that the inner product of two rows is their correlation; zero rows if constant."""
    n = layers[0][1].shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=layers[0][1].device).triu_(1)
    triangles = layers[0][1].new_empty(len(layers), n * (n - 1) // 2)
    constant = []
    for row, (name, features) in zip(triangles, layers):
        triangle = _rdm(features, metric, name)[upper]
        spread = float(triangle.amax() - triangle.amin())
        if spread <= _CONSTANT_SPREAD * torch.finfo(triangle.dtype).eps * float(triangle.amax()):
            constant.append(name)
            row.zero_()
            continue
        if method == "spearman":
            triangle = _average_ranks(triangle)
        triangle = triangle - triangle.mean()
        row.copy_(triangle / triangle.norm())
    if constant:
        warnings.warn(f"RSA is reported as 0 for {', '.join(constant)}: every pair of stimuli is equally dissimilar "
                      f"(constant RDM)", RuntimeWarning, stacklevel=3)
    return triangles
