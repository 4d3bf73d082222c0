"""TwoNN intrinsic dimension (seed 000 §III-A, eqs. (1)-(2)): recovers known dimensions,
agrees with scikit-dimension, handles duplicates, and its 95% interval is calibrated."""

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.base import clone
from sklearn.datasets import make_swiss_roll

from locallearn.analysis.intrinsic_dimension import TwoNN, id_profile, twonn_dimension


def linearly_embedded(latent: torch.Tensor, ambient_dim: int, generator) -> torch.Tensor:
    """latent (N, d) mapped into R^ambient_dim by a random orthonormal map: distances kept."""
    basis, _ = torch.linalg.qr(torch.randn(ambient_dim, latent.shape[1], generator=generator, dtype=torch.float64))
    return (latent.double() @ basis.T).float()


def numpy_seed(generator) -> int:
    return int(torch.randint(2**31, (1,), generator=generator))


@pytest.mark.parametrize("dimension", [5, 10])
def test_gaussian_in_100_dimensions(generator, dimension):
    latent = torch.randn(10000, dimension, generator=generator, dtype=torch.float64)
    estimate = twonn_dimension(linearly_embedded(latent, 100, generator))
    assert estimate == pytest.approx(dimension, rel=0.05)


def test_uniform_hypercube_in_30_dimensions(generator):
    latent = torch.rand(10000, 2, generator=generator, dtype=torch.float64)
    assert twonn_dimension(linearly_embedded(latent, 30, generator)) == pytest.approx(2, rel=0.05)


def test_hypercube_boundaries_bias_high_dimensions_down(generator):
    # Points near the faces of [0, 1]^10 miss neighbours outside: with N = 4000 TwoNN reads
    # ~8.7, a limitation of the estimator (Facco et al. 2017), not of this implementation.
    estimate = twonn_dimension(torch.rand(4000, 10, generator=generator))
    assert 8.0 < estimate < 9.5


def test_swiss_roll(generator):
    points, _ = make_swiss_roll(10000, random_state=numpy_seed(generator))
    assert twonn_dimension(points) == pytest.approx(2, rel=0.05)


@pytest.mark.parametrize("discard_fraction", [0.1, 0.25])
def test_agrees_with_scikit_dimension(generator, discard_fraction):
    skdim = pytest.importorskip("skdim")
    latent = torch.randn(3000, 6, generator=generator, dtype=torch.float64)
    for points in (linearly_embedded(latent, 30, generator).numpy(),
                   make_swiss_roll(3000, random_state=numpy_seed(generator))[0]):
        reference = skdim.id.TwoNN(discard_fraction=discard_fraction).fit(points).dimension_
        estimate = twonn_dimension(points, discard_fraction=discard_fraction)
        assert estimate == pytest.approx(reference, rel=1e-4)  # same eq. (2); only rounding differs


def test_torch_and_cpu_backends_give_the_same_dimension(generator):
    points = linearly_embedded(torch.randn(3000, 4, generator=generator, dtype=torch.float64), 50, generator)
    assert twonn_dimension(points, backend="torch") == pytest.approx(twonn_dimension(points, backend="cpu"),
                                                                     rel=1e-6)


def test_duplicates_are_dropped_with_a_warning(generator):
    distinct = torch.randn(2000, 4, generator=generator)
    copies = distinct[torch.randint(2000, (37,), generator=generator)]  # may repeat a row: still 37 extra
    with_duplicates = torch.cat([distinct, copies])[torch.randperm(2037, generator=generator)]
    with pytest.warns(UserWarning, match="dropped 37 duplicate point"):
        estimate = twonn_dimension(with_duplicates)
    assert estimate == pytest.approx(twonn_dimension(distinct), rel=1e-12)
    with pytest.warns(UserWarning, match="dropped 37 duplicate point"):
        model = TwoNN(n_subsamples=3, random_state=0).fit(with_duplicates)
    assert model.n_samples_ == 2000


def test_confidence_interval_contains_the_hypercube_dimension():
    # One fixed draw: a 95% interval misses one time in twenty by design.
    generator = torch.Generator().manual_seed(20240501)
    points = linearly_embedded(torch.rand(3000, 2, generator=generator, dtype=torch.float64), 20, generator)
    model = TwoNN(random_state=0).fit(points)
    low, high = model.confidence_interval_
    assert low < 2 < high
    assert low < model.dimension_ < high
    assert high - low < 0.5


def test_confidence_interval_is_calibrated(generator):
    # Over independent draws of a 2-D cube the interval covers the truth ~95% of the time
    # (binomial: >= 23 of 30 fails about once in 1000 runs) and its implied standard error
    # matches the spread of the estimates; a scheme off by a factor of two either way fails.
    t_quantile = scipy.stats.t.ppf(0.975, 10 - 1)
    estimates, standard_errors, covered = [], [], 0
    for draw in range(30):
        points = torch.rand(1000, 2, generator=generator)
        model = TwoNN(n_subsamples=10, backend="torch", random_state=draw).fit(points)
        low, high = model.confidence_interval_
        estimates.append(model.dimension_)
        standard_errors.append((high - low) / (2 * t_quantile))
        covered += low <= 2 <= high
    assert covered >= 23
    assert 0.5 < np.mean(standard_errors) / np.std(estimates, ddof=1) < 2.0


def test_estimator_follows_scikit_learn_conventions(generator):
    points = torch.randn(500, 3, generator=generator)
    model = TwoNN(n_subsamples=4, subsample_fraction=0.4, random_state=7)
    assert clone(model).get_params() == model.get_params()
    assert model.fit(points) is model
    again = TwoNN(n_subsamples=4, subsample_fraction=0.4, random_state=7).fit(points.numpy())
    assert again.confidence_interval_ == pytest.approx(model.confidence_interval_)
    assert model.dimension_ == pytest.approx(twonn_dimension(points))


def test_id_profile_flattens_each_layer(generator, capsys):
    layers = [
        linearly_embedded(torch.randn(2000, 2, generator=generator), 20, generator).reshape(2000, 4, 5),
        linearly_embedded(torch.randn(2000, 6, generator=generator), 30, generator),
    ]
    profile = id_profile(layers, n_subsamples=3, random_state=0, show_progress=False)
    # TwoNN's estimate of a 6-d Gaussian from 2,000 points: 5.7-6.4 over 40 seeds, 6.66 in
    # one CI run (LOCALLEARN_TEST_SEED=385206707); 15 % is wrong-layer-shape territory only.
    assert [model.dimension_ for model in profile] == pytest.approx([2, 6], rel=0.15)
    assert capsys.readouterr().err == ""
    id_profile(layers[:1], n_subsamples=2, show_progress=True)
    assert "TwoNN per layer" in capsys.readouterr().err


def test_bad_input_errors(generator):
    points = torch.randn(100, 3, generator=generator)
    with_nan = points.clone()
    with_nan[[4, 9], 0] = torch.nan
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN or Inf \(first at row 4\)"):
        twonn_dimension(with_nan)
    with pytest.raises(ValueError, match="2-D"):
        twonn_dimension(points.reshape(100, 3, 1))
    with pytest.warns(UserWarning, match="dropped 3 duplicate"), \
            pytest.raises(ValueError, match="at least 3 distinct points, got 2"):
        twonn_dimension(points[[0, 1, 0, 1, 1]])
    lattice = torch.cartesian_prod(torch.arange(10.0), torch.arange(10.0))
    with pytest.raises(ValueError, match="every kept ratio r2/r1 is 1"):
        twonn_dimension(lattice)
    with pytest.raises(ValueError, match=r"discard_fraction must lie in \[0, 1\)"):
        twonn_dimension(points, discard_fraction=1.0)
    with pytest.raises(ValueError, match="n_subsamples must be an int >= 2"):
        TwoNN(n_subsamples=1).fit(points)
    with pytest.raises(ValueError, match="subsample_fraction must lie strictly between 0 and 1"):
        TwoNN(subsample_fraction=1.0).fit(points)
    with pytest.raises(ValueError, match="leaves 1 per subsample"):
        TwoNN(subsample_fraction=0.01).fit(points)
    with pytest.raises(TypeError, match="list or tuple of per-layer"):
        id_profile(points)
    with pytest.raises(ValueError, match=r"activations\[1\] has 2 row\(s\) with NaN"):
        id_profile([points, with_nan], show_progress=False)
