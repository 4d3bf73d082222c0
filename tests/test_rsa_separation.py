"""RSA (seed 000 §III-B) and inter/intra-class distances (seed 001 §3.2): hand-computed
examples, scipy references, batched matrices against loops, degenerate and bad input."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr

from locallearn.analysis.rsa import rdm, rsa, rsa_matrix
from locallearn.analysis.separation import ClassSeparation, class_separation

# Four stimuli, three features. Centred: (-1, 0, 1), (1, 0, -1), (1/3, -2/3, 1/3), (-2, 0, 2):
# correlations 1 → 2 is -1, 1 → 3 is 0, 1 → 4 is +1, ...
PATTERNS = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 0.0, 1.0], [2.0, 4.0, 6.0]])
PATTERNS_RDM = torch.tensor([[0.0, 2.0, 1.0, 0.0],
                             [2.0, 0.0, 1.0, 2.0],
                             [1.0, 1.0, 0.0, 1.0],
                             [0.0, 2.0, 1.0, 0.0]])
# Corners of a 3 × 4 rectangle: distances (0,1)=3, (0,2)=4, (0,3)=5, (1,2)=5, (1,3)=4, (2,3)=3.
RECTANGLE = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
# Points 0, 1, 2, 4 on a line: distances 1, 2, 4, 1, 3, 2.
LINE = torch.tensor([[0.0], [1.0], [2.0], [4.0]])


def test_rdm_of_hand_examples():
    torch.testing.assert_close(rdm(PATTERNS), PATTERNS_RDM.double(), rtol=0, atol=1e-12)
    expected = torch.tensor([[0.0, 3, 4, 5], [3, 0, 5, 4], [4, 5, 0, 3], [5, 4, 3, 0]], dtype=torch.float64)
    torch.testing.assert_close(rdm(RECTANGLE, "euclidean"), expected, rtol=0, atol=1e-12)


def test_rsa_of_hand_examples():
    """Rectangle triangle 3,4,5,5,4,3 → ranks 1.5,3.5,5.5,5.5,3.5,1.5; line triangle 1,2,4,1,3,2
    → ranks 1.5,3.5,6,1.5,5,3.5. Centred ranks (-2,0,2,2,0,-2) and (-2,0,2.5,-2,1.5,0):
    Spearman = 5 / √(16 · 16.5). Centred raw values (-1,0,1,1,0,-1) and
    (-7,-1,11,-7,5,-1)/6: Pearson = 2 / (2 · √246 / 6) = 6 / √246."""
    spearman = rsa(RECTANGLE, LINE, metric="euclidean")
    assert spearman == pytest.approx(5 / math.sqrt(16 * 16.5), rel=1e-12)
    assert rsa(RECTANGLE, LINE, metric="euclidean", method="pearson") == pytest.approx(6 / math.sqrt(246), rel=1e-12)
    assert rsa(LINE, RECTANGLE, metric="euclidean") == pytest.approx(spearman, rel=1e-12)
    assert rsa(RECTANGLE, 2.5 * RECTANGLE + 1.0, metric="euclidean") == pytest.approx(1.0, rel=1e-12)


def test_rdm_matches_scipy_pdist(generator):
    x = torch.randn(20, 3, 5, generator=generator, dtype=torch.float64)
    n = len(x)
    upper = torch.triu_indices(n, n, offset=1)
    for metric in ("correlation", "euclidean"):
        dissimilarity = rdm(x, metric)
        expected = pdist(x.flatten(1).numpy(), metric=metric)
        np.testing.assert_allclose(dissimilarity[upper[0], upper[1]].numpy(), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dissimilarity, dissimilarity.T, rtol=0, atol=0)
        assert (dissimilarity.diagonal() == 0).all()
    np.testing.assert_allclose(rdm(x.float()).numpy(), rdm(x).numpy(), atol=1e-5)


def test_correlation_rdm_ignores_each_stimulus_offset_and_scale(generator):
    x = torch.randn(12, 8, generator=generator, dtype=torch.float64)
    scale = torch.rand(12, 1, generator=generator, dtype=torch.float64) + 0.5
    offset = torch.randn(12, 1, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(rdm(scale * x + offset), rdm(x), rtol=0, atol=1e-12)
    assert not torch.allclose(rdm(scale * x + offset, "euclidean"), rdm(x, "euclidean"))


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rsa_matches_scipy(generator, metric):
    x = torch.randn(15, 6, generator=generator, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(6, 4, generator=generator, dtype=torch.float64))
    y = y + 0.5 * torch.randn(15, 4, generator=generator, dtype=torch.float64)
    triangle_x = pdist(x.numpy(), metric=metric)
    triangle_y = pdist(y.numpy(), metric=metric)
    assert rsa(x, y, metric=metric) == pytest.approx(spearmanr(triangle_x, triangle_y).statistic, rel=1e-10)
    assert rsa(x, y, metric=metric, method="pearson") == pytest.approx(pearsonr(triangle_x, triangle_y).statistic,
                                                                       rel=1e-10)


def test_spearman_averages_tied_ranks_like_scipy(generator):
    """Integer points on a small grid give many tied distances."""
    x = torch.randint(0, 3, (12, 2), generator=generator).double()
    x[:4] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # at least three distinct points
    y = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    n = len(x)
    upper = torch.triu_indices(n, n, offset=1)
    triangle_x = rdm(x, "euclidean")[upper[0], upper[1]].numpy()
    triangle_y = rdm(y, "euclidean")[upper[0], upper[1]].numpy()
    assert len(np.unique(triangle_x)) < len(triangle_x)
    expected = spearmanr(triangle_x, triangle_y).statistic
    assert rsa(x, y, metric="euclidean") == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_rsa_matrix_equals_the_pairwise_loop(generator, method):
    acts_a = [torch.randn(14, 2, 4, generator=generator, dtype=torch.float64)]
    acts_a.append(torch.tanh(acts_a[0].flatten(1) @ torch.randn(8, 6, generator=generator, dtype=torch.float64)))
    acts_b = [acts_a[1] + 0.2 * torch.randn(14, 6, generator=generator, dtype=torch.float64),
              torch.randn(14, 3, generator=generator, dtype=torch.float64),
              torch.randn(14, 5, generator=generator, dtype=torch.float64)]
    within, across = rsa_matrix(acts_a, method=method), rsa_matrix(acts_a, acts_b, method=method)
    assert within.shape == (2, 2) and across.shape == (2, 3)
    for (i, a), (j, b) in itertools.product(enumerate(acts_a), enumerate(acts_a)):
        assert float(within[i, j]) == pytest.approx(rsa(a, b, method=method), rel=1e-10)
    for (i, a), (j, b) in itertools.product(enumerate(acts_a), enumerate(acts_b)):
        assert float(across[i, j]) == pytest.approx(rsa(a, b, method=method), rel=1e-10)
    assert float(within[0, 0]) == pytest.approx(1.0, rel=1e-12)


def test_constant_patterns_and_constant_rdms_warn_instead_of_nan(generator):
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    x[2] = 3.0
    with pytest.warns(RuntimeWarning, match=r"rows \[2\]"):
        dissimilarity = rdm(x)
    expected_row = torch.ones(6, dtype=torch.float64)
    expected_row[2] = 0
    torch.testing.assert_close(dissimilarity[2], expected_row, rtol=0, atol=0)
    torch.testing.assert_close(dissimilarity[:, 2], expected_row, rtol=0, atol=0)
    equidistant = torch.eye(5, dtype=torch.float64)  # every pair at distance √2
    with pytest.warns(RuntimeWarning, match=r"reported as 0 for acts_b\[0\]"):
        matrix = rsa_matrix([x[:5]], [equidistant], metric="euclidean")
    assert float(matrix[0, 0]) == 0.0


def test_an_rdm_constant_up_to_rounding_is_constant(generator):
    """Equal distances that differ in their last bits (the Gram-matrix route rounds them
    differently on different BLAS builds) are a constant RDM, not a pattern to rank."""
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    nearly_equidistant = torch.eye(5, dtype=torch.float64)
    nearly_equidistant[0, 0] += 2.0**-48
    for method in ("spearman", "pearson"):
        with pytest.warns(RuntimeWarning, match=r"reported as 0 for acts_b\[0\]"):
            matrix = rsa_matrix([x], [nearly_equidistant], metric="euclidean", method=method)
        assert float(matrix[0, 0]) == 0.0


def test_rsa_bad_input_is_rejected_with_a_clear_error(generator):
    x = torch.randn(6, 4, generator=generator)
    with pytest.raises(ValueError, match="same N examples"):
        rsa(x, x[:5])
    with pytest.raises(ValueError, match="at least 3"):
        rsa(x[:2], x[:2])
    nan_row = x.clone()
    nan_row[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values .* rows \[4\]"):
        rsa_matrix([x], [nan_row])
    with pytest.raises(ValueError, match="at least 2"):
        rdm(x[:, :1])
    with pytest.raises(ValueError, match="method must be one of"):
        rsa(x, x, method="kendall")
    with pytest.raises(ValueError, match="metric must be one of"):
        rdm(x, metric="cosine")


def test_class_separation_of_a_hand_example():
    """Class 5: (-1,0), (1,0): d = 2, centroid (0,0). Class 0: (3,-2), (3,2): d = 4, centroid
    (3,0). Class 9: a 3-4-5 triangle, mean side 4, centroid (0,4). Centroids form a 3-4-5
    triangle: inter = 4; intra = (2 + 4 + 4) / 3; ratio = 4 / (10/3) = 1.2."""
    points = {5: [(-1.0, 0.0), (1.0, 0.0)], 0: [(3.0, -2.0), (3.0, 2.0)],
              9: [(-1.0, 8 / 3), (2.0, 8 / 3), (-1.0, 20 / 3)]}
    rows = [(label, point) for label, members in points.items() for point in members]
    order = [3, 0, 5, 1, 6, 2, 4]  # interleave the classes
    features = torch.tensor([rows[i][1] for i in order], dtype=torch.float64)
    labels = torch.tensor([rows[i][0] for i in order])
    separation = class_separation(features, labels)
    assert isinstance(separation, ClassSeparation)
    assert separation.per_class_intra == pytest.approx({0: 4.0, 5: 2.0, 9: 4.0}, rel=1e-12)
    assert separation.inter == pytest.approx(4.0, rel=1e-12)
    assert separation.intra == pytest.approx(10 / 3, rel=1e-12)
    assert separation.ratio == pytest.approx(1.2, rel=1e-12)


def test_class_separation_matches_scipy(generator):
    features = torch.randn(300, 2, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (300,), generator=generator)
    features = features + labels[:, None, None].double()
    separation = class_separation(features, labels)
    flat, classes = features.flatten(1).numpy(), labels.numpy()
    expected_per_class = {k: pdist(flat[classes == k]).mean() for k in range(4)}
    centroids = np.stack([flat[classes == k].mean(axis=0) for k in range(4)])
    assert separation.per_class_intra == pytest.approx(expected_per_class, rel=1e-10)
    assert separation.intra == pytest.approx(np.mean(list(expected_per_class.values())), rel=1e-10)
    assert separation.inter == pytest.approx(pdist(centroids).mean(), rel=1e-10)
    assert separation.ratio == pytest.approx(separation.inter / separation.intra, rel=1e-12)
    scaled = class_separation(3.0 * features + 7.0, labels)
    assert scaled.ratio == pytest.approx(separation.ratio, rel=1e-10)
    assert scaled.inter == pytest.approx(3.0 * separation.inter, rel=1e-10)
    single = class_separation(features.float(), labels)
    assert single.ratio == pytest.approx(separation.ratio, rel=1e-5)


def test_class_separation_in_blocks_of_rows(generator):
    """A class larger than one block of rows (1024) sums its distances over blocks."""
    features = torch.randn(1100, 3, generator=generator, dtype=torch.float64)
    labels = torch.zeros(1100, dtype=torch.long)
    labels[:20] = 1
    separation = class_separation(features, labels)
    assert separation.per_class_intra[0] == pytest.approx(pdist(features[20:].numpy()).mean(), rel=1e-10)


def test_class_separation_degenerate_classes(generator):
    collapsed = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.warns(RuntimeWarning, match="infinite"):
        separation = class_separation(collapsed, labels)
    assert separation.inter == pytest.approx(5.0) and separation.intra == 0.0 and separation.ratio == math.inf
    overlapping = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    separation = class_separation(overlapping, labels)
    assert separation.inter == 0.0 and separation.ratio == 0.0


def test_class_separation_bad_input_is_rejected_with_a_clear_error(generator):
    features = torch.randn(6, 3, generator=generator)
    with pytest.raises(ValueError, match=r"at least 2 examples.*\[2\]"):
        class_separation(features, torch.tensor([0, 0, 1, 1, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(N,\) = \(6,\)"):
        class_separation(features, torch.tensor([0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_separation(features, torch.zeros(6, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class labels"):
        class_separation(features, torch.tensor([0.0, 0, 1, 1, 1, 1]))
    nan_row = features.clone()
    nan_row[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite values .* rows \[1\]"):
        class_separation(nan_row, torch.tensor([0, 0, 1, 1, 1, 1]))
