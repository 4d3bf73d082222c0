"""TwoNN intrinsic dimension (seed 000 §III-A, eqs. (1)-(2); Facco et al. 2017).

For each point i with first and second neighbour distances r1 ≤ r2, μ_i = r2/r1 follows
F(μ) = 1 − μ^(−d) when the density is locally constant, so −log(1 − F(μ)) = d·log μ
(eq. (1)). With μ sorted ascending and the empirical F(μ_(i)) = i/N, the largest
``discard_fraction`` of μ (the most noise-sensitive) are dropped and d is the slope of the
least-squares line through the origin of the points (log μ_(i), −log(1 − i/N)) (eq. (2)).
The largest μ always goes, even with discard_fraction = 0: F = 1 there.

Seed 000 Fig. 3 draws the dimension of each layer with a 95% confidence interval but does
not say how the interval is formed (each network there was trained with three seeds).
`TwoNN` gives the sampling uncertainty of one estimate by repeated subsampling: see its
docstring.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.stats
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from torch import Tensor
from tqdm.auto import tqdm

from locallearn.analysis.neighbors import Backend, as_point_matrix, nearest_neighbors

__all__ = ["TwoNN", "id_profile", "twonn_dimension"]


def twonn_dimension(points, *, discard_fraction: float = 0.1, backend: Backend = "auto") -> float:
    """TwoNN intrinsic dimension of the rows of an (N, D) tensor or array (seed 000,
    eqs. (1)-(2)). Exact duplicate rows (r1 = 0, μ undefined) are removed first, with a
    warning that gives their count; ``backend`` picks the neighbour search
    (see `locallearn.analysis.neighbors.nearest_neighbors`)."""
    _check_discard_fraction(discard_fraction)
    return _twonn(_distinct_points(as_point_matrix(points)), discard_fraction, backend)


class TwoNN(BaseEstimator):
    """TwoNN intrinsic dimension as a scikit-learn estimator (seed 000 §III-A, eqs. (1)-(2)).

    ``fit(X)`` sets ``dimension_`` (eq. (2) on all distinct rows of X), ``n_samples_`` (the
    number of distinct rows used; duplicates are dropped with a warning) and
    ``confidence_interval_``, a 95% interval for ``dimension_`` in the spirit of seed 000
    Fig. 3. The estimate is repeated on ``n_subsamples`` random subsets of m =
    ``subsample_fraction``·N distinct points drawn without replacement (a bootstrap with
    replacement would create duplicates, which TwoNN cannot use); their standard deviation,
    rescaled to N points by √(m/N) (subsampling at the √N rate, Politis & Romano 1994),
    is the standard error, and the interval is dimension_ ± t·se with t the 97.5% quantile
    of Student's t with n_subsamples − 1 degrees of freedom.

    Why not resample the ratios μ: neighbouring points share neighbours, so the μ are not
    independent. In simulations (uniform cube and Gaussian, d = 2-8, N = 2000-4000) the
    standard error from resampling μ was 0.64-0.96 of the spread of estimates over
    independent draws, the delete-d jackknife's 1.2-1.6, and this one's 0.72-1.0. The
    interval covers sampling noise only, not the estimator's bias (boundaries, curvature,
    density gradients at the scale of the second neighbour).
    """

    def __init__(self, discard_fraction: float = 0.1, n_subsamples: int = 20, subsample_fraction: float = 0.5,
                 backend: Backend = "auto", random_state: int | np.random.RandomState | None = None):
        self.discard_fraction = discard_fraction
        self.n_subsamples = n_subsamples
        self.subsample_fraction = subsample_fraction
        self.backend = backend
        self.random_state = random_state

    def fit(self, X, y=None) -> TwoNN:
        """Estimate the dimension of the rows of X (N, D) and its 95% interval; y is ignored."""
        _check_discard_fraction(self.discard_fraction)
        if isinstance(self.n_subsamples, bool) or not isinstance(self.n_subsamples, int) or self.n_subsamples < 2:
            raise ValueError(f"n_subsamples must be an int >= 2 (the interval needs a spread), "
                             f"got {self.n_subsamples!r}")
        if not 0 < self.subsample_fraction < 1:
            raise ValueError(f"subsample_fraction must lie strictly between 0 and 1, got {self.subsample_fraction!r}")
        points = _distinct_points(as_point_matrix(X, name="X"))
        n_points = len(points)
        subsample_size = min(round(self.subsample_fraction * n_points), n_points - 1)
        if subsample_size < 3:
            raise ValueError(f"subsample_fraction={self.subsample_fraction} of {n_points} distinct points leaves "
                             f"{subsample_size} per subsample; TwoNN needs at least 3: raise it or give more points")
        self.dimension_ = _twonn(points, self.discard_fraction, self.backend)
        self.n_samples_ = n_points
        random_state = check_random_state(self.random_state)
        estimates = []
        for _ in range(self.n_subsamples):
            subset = torch.as_tensor(random_state.choice(n_points, subsample_size, replace=False), device=points.device)
            estimates.append(_twonn(points[subset], self.discard_fraction, self.backend))
        standard_error = statistics.stdev(estimates) * math.sqrt(subsample_size / n_points)
        half_width = scipy.stats.t.ppf(0.975, self.n_subsamples - 1) * standard_error
        self.confidence_interval_ = (self.dimension_ - half_width, self.dimension_ + half_width)
        return self


def id_profile(activations: Sequence, *, show_progress: bool = True, **twonn_options) -> list[TwoNN]:
    """A fitted `TwoNN` per layer (the curves of seed 000 Fig. 3): ``activations[l]`` holds
    layer l's representations of the same N inputs, shape (N, ...), flattened to
    (N, features). ``twonn_options`` go to `TwoNN`; ``show_progress`` draws a tqdm bar."""
    if isinstance(activations, str) or not isinstance(activations, Sequence):
        raise TypeError("activations must be a list or tuple of per-layer (N, ...) arrays, "
                        f"got {type(activations).__name__}")
    profile = []
    for layer, layer_activations in enumerate(tqdm(activations, desc="TwoNN per layer", unit="layer",
                                                   disable=not show_progress)):
        if not isinstance(layer_activations, Tensor):
            layer_activations = np.asarray(layer_activations)
        if layer_activations.ndim < 1 or len(layer_activations) == 0:
            raise ValueError(f"activations[{layer}] must have a leading axis of N >= 1 inputs, "
                             f"got shape {tuple(layer_activations.shape)}")
        flat = layer_activations.reshape(len(layer_activations), -1)
        profile.append(TwoNN(**twonn_options).fit(as_point_matrix(flat, name=f"activations[{layer}]")))
    return profile


def _check_discard_fraction(discard_fraction: float) -> None:
    if not 0 <= discard_fraction < 1:
        raise ValueError(f"discard_fraction must lie in [0, 1), got {discard_fraction!r}")


def _distinct_points(points: Tensor) -> Tensor:
    """The distinct rows of ``points``, warning with the count of duplicates dropped; at least 3."""
    distinct = torch.unique(points, dim=0)
    n_duplicates = len(points) - len(distinct)
    if n_duplicates:
        warnings.warn(f"dropped {n_duplicates} duplicate point(s) of {len(points)}: a point at distance 0 "
                      f"from its nearest neighbour has no TwoNN ratio r2/r1", stacklevel=3)
    if len(distinct) < 3:
        raise ValueError(f"TwoNN needs at least 3 distinct points, got {len(distinct)}")
    return distinct


def _twonn(points: Tensor, discard_fraction: float, backend: Backend) -> float:
    """Eq. (2) on distinct points."""
    distances, _ = nearest_neighbors(points, 2, backend=backend)
    return twonn_from_distances(distances[:, 0], distances[:, 1], discard_fraction)


def twonn_from_distances(r1: Tensor, r2: Tensor, discard_fraction: float = 0.1) -> float:
    """Eq. (2) from every point's first and second neighbour distances (r1 > 0): the slope
    through the origin of −log(1 − i/N) on log μ_(i), μ = r2/r1, the largest
    ``discard_fraction`` of μ left out."""
    _check_discard_fraction(discard_fraction)
    ratios = (r2.double().cpu() / r1.double().cpu()).sort().values
    n_points = len(ratios)
    # F(μ_(N)) = 1 has −log(0) = ∞: the largest ratio always goes.
    n_kept = min(int(n_points * (1 - discard_fraction)), n_points - 1)
    if n_kept < 1:
        raise ValueError(f"discard_fraction={discard_fraction} leaves no ratio of {n_points} points to fit")
    log_ratios = ratios[:n_kept].log()
    if not bool((log_ratios > 0).any()):
        raise ValueError("every kept ratio r2/r1 is 1 (first and second neighbours tie, as on a regular "
                         "lattice): TwoNN has no slope to fit; add noise to break the ties")
    empirical_cdf = torch.arange(1, n_kept + 1, dtype=torch.float64) / n_points
    log_survival = -torch.log1p(-empirical_cdf)
    return float((log_ratios @ log_survival) / (log_ratios @ log_ratios))
