"""CKA (seed 000 eqs. (3)-(5)): HSIC estimators against their definitions written out here,
invariances, the batched layers × layers matrix against a pairwise loop, minibatch
accumulation (Nguyen et al. 2021), degenerate and bad input."""

import itertools
import math

import numpy as np
import pytest
import torch

from locallearn.analysis.cka import MinibatchCKA, cka, cka_matrix, gram, hsic

ESTIMATORS = [False, True]
KERNELS = ["linear", "rbf"]


def reference_gram(x: np.ndarray, kernel: str, sigma: float = 0.8) -> np.ndarray:
    """k(x_i, x_j) entry by entry; RBF bandwidth = sigma × median distance over pairs i < j."""
    x = x.reshape(len(x), -1)
    n = len(x)
    if kernel == "linear":
        return np.array([[x[i] @ x[j] for j in range(n)] for i in range(n)])
    distances = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
    bandwidth = sigma * np.median([distances[i, j] for i in range(n) for j in range(i + 1, n)])
    return np.exp(-distances**2 / (2 * bandwidth**2))


def reference_biased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """tr(KHLH) / (n-1)² with H = I - 11ᵀ/n."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def reference_debiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012): [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1/((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3)),
    K̃, L̃ with zeroed diagonals, every sum written out."""
    n = len(k)
    kt = [[0.0 if i == j else k[i, j] for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else l[i, j] for j in range(n)] for i in range(n)]
    trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(kt[i][j] for i in range(n) for j in range(n))
    sum_l = sum(lt[i][j] for i in range(n) for j in range(n))
    sum_kl = sum(kt[i][j] * lt[j][q] for i in range(n) for j in range(n) for q in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 / (n - 2) * sum_kl) / (n * (n - 3))


def reference_cka(x: torch.Tensor, y: torch.Tensor, kernel: str, debiased: bool) -> float:
    k, l = reference_gram(x.double().numpy(), kernel), reference_gram(y.double().numpy(), kernel)
    estimate = reference_debiased_hsic if debiased else reference_biased_hsic
    return estimate(k, l) / math.sqrt(estimate(k, k) * estimate(l, l))


def related_pair(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two representations of n examples with a CKA well inside (0, 1)."""
    x = torch.randn(n, 3, 2, 2, generator=generator, dtype=torch.float64)
    y = torch.tanh(x.flatten(1)[:, :5] @ torch.randn(5, 7, generator=generator, dtype=torch.float64))
    return x, y + 0.5 * torch.randn(n, 7, generator=generator, dtype=torch.float64)


def random_orthogonal(generator: torch.Generator, size: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_hsic_matches_the_written_out_estimators(generator, debiased):
    x, y = related_pair(generator, 9)
    k, l = gram(x), gram(y, "rbf")
    expected = (reference_debiased_hsic if debiased else reference_biased_hsic)(k.numpy(), l.numpy())
    assert hsic(k, l, debiased=debiased) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert hsic(k, k, debiased=debiased) > 0


def test_debiased_hsic_is_the_u_statistic_over_distinct_quadruples(generator):
    """HSIC_1 = (1/(n)_4) Σ over distinct (i, j, q, r) of K_ij L_ij + K_ij L_qr - 2 K_ij L_iq."""
    x, y = related_pair(generator, 6)
    k, l = gram(x).numpy(), gram(y).numpy()
    quadruples = list(itertools.permutations(range(6), 4))
    u_statistic = sum(k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
                      for i, j, q, r in quadruples) / len(quadruples)
    assert hsic(torch.from_numpy(k), torch.from_numpy(l), debiased=True) == pytest.approx(u_statistic, rel=1e-10)


def test_gram_matches_its_definition(generator):
    x, _ = related_pair(generator, 8)
    for kernel in KERNELS:
        torch.testing.assert_close(gram(x, kernel), torch.from_numpy(reference_gram(x.numpy(), kernel)))
    torch.testing.assert_close(gram(x, "rbf", sigma=2.0), torch.from_numpy(reference_gram(x.numpy(), "rbf", 2.0)))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_cka_matches_the_reference_formula(generator, kernel, debiased):
    x, y = related_pair(generator, 10)
    value = cka(x, y, kernel=kernel, debiased=debiased)
    assert value == pytest.approx(reference_cka(x, y, kernel, debiased), rel=1e-9)
    assert abs(value) < 0.99
    assert cka(x.float(), y.float(), kernel=kernel, debiased=debiased) == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_cka_invariances(generator, kernel, debiased):
    """CKA(X, X) = 1; invariant to orthogonal transforms, isotropic scaling and translation of
    either representation (RBF too: its median bandwidth scales with the distances); not to an
    anisotropic scaling, which shows the comparison can tell the difference."""
    x, y = related_pair(generator, 24)
    features = x.flatten(1)
    value = cka(features, y, kernel=kernel, debiased=debiased)
    assert cka(features, features, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    transformed = 3.7 * features @ random_orthogonal(generator, features.shape[1]) + 2.0
    assert cka(transformed, y, kernel=kernel, debiased=debiased) == pytest.approx(value, rel=1e-9)
    assert cka(y, transformed, kernel=kernel, debiased=debiased) == pytest.approx(value, rel=1e-9)
    stretched = features * torch.linspace(0.1, 10.0, features.shape[1], dtype=torch.float64)
    assert abs(cka(stretched, y, kernel=kernel, debiased=debiased) - value) > 1e-3


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_cka_matrix_equals_the_pairwise_loop(generator, kernel, debiased):
    n = 16
    acts_a = [torch.randn(n, 2, 3, 3, generator=generator, dtype=torch.float64)]
    acts_a.append(torch.relu(acts_a[0].flatten(1) @ torch.randn(18, 10, generator=generator, dtype=torch.float64)))
    acts_a.append(acts_a[1][:, :4] + 0.3 * torch.randn(n, 4, generator=generator, dtype=torch.float64))
    acts_b = [acts_a[2] @ torch.randn(4, 6, generator=generator, dtype=torch.float64),
              torch.randn(n, 5, generator=generator, dtype=torch.float64)]
    within = cka_matrix(acts_a, kernel=kernel, debiased=debiased)
    across = cka_matrix(acts_a, acts_b, kernel=kernel, debiased=debiased)
    assert within.shape == (3, 3) and across.shape == (3, 2)
    for (i, a), (j, b) in itertools.product(enumerate(acts_a), enumerate(acts_a)):
        assert float(within[i, j]) == pytest.approx(cka(a, b, kernel=kernel, debiased=debiased), rel=1e-10, abs=1e-12)
    for (i, a), (j, b) in itertools.product(enumerate(acts_a), enumerate(acts_b)):
        assert float(across[i, j]) == pytest.approx(cka(a, b, kernel=kernel, debiased=debiased), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("within", [True, False])
def test_minibatch_cka_averages_the_debiased_hsic_of_each_minibatch(generator, within):
    n, batch_size = 50, 12  # 4 minibatches of 12 or 13 examples
    acts_a = [torch.randn(n, 6, generator=generator, dtype=torch.float64) for _ in range(2)]
    acts_b = acts_a if within else [torch.randn(n, 3, generator=generator, dtype=torch.float64) + acts_a[0][:, :3]]
    batches = torch.arange(n).tensor_split(n // batch_size)

    def mean_hsic(x, y):
        return sum(hsic(gram(x[rows]), gram(y[rows]), debiased=True) for rows in batches) / len(batches)

    expected = torch.tensor([[mean_hsic(a, b) / math.sqrt(mean_hsic(a, a) * mean_hsic(b, b)) for b in acts_b]
                             for a in acts_a], dtype=torch.float64)
    computed = cka_matrix(acts_a, None if within else acts_b, debiased=True, batch_size=batch_size)
    torch.testing.assert_close(computed, expected, rtol=1e-10, atol=1e-12)

    streaming = MinibatchCKA()
    for rows in batches:
        streaming.update([a[rows] for a in acts_a], None if within else [b[rows] for b in acts_b])
    assert streaming.num_batches == len(batches)
    torch.testing.assert_close(streaming.compute(), expected, rtol=1e-10, atol=1e-12)


def test_minibatch_cka_converges_to_the_full_data_value(generator):
    """Over 16 independent pairs, the root-mean-square gap to the full-data debiased CKA
    shrinks as the minibatch grows and vanishes at one minibatch of all N examples."""
    n = 512
    acts_a = [torch.randn(n, 6, generator=generator, dtype=torch.float64) for _ in range(16)]
    acts_b = [a[:, :2] @ torch.randn(2, 3, generator=generator, dtype=torch.float64)
              + torch.randn(n, 3, generator=generator, dtype=torch.float64) for a in acts_a]
    full = cka_matrix(acts_a, acts_b, debiased=True).diagonal()

    def gap(batch_size: int) -> float:
        minibatch = cka_matrix(acts_a, acts_b, debiased=True, batch_size=batch_size).diagonal()
        return float((minibatch - full).square().mean().sqrt())

    gaps = [gap(batch_size) for batch_size in (8, 32, 128)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.02
    assert gap(n) < 1e-12


def test_minibatch_cka_reaches_the_population_value_beyond_one_gram_matrix(generator):
    """y = the first of 4 iid N(0, 1) features of x: population linear CKA
    = ||Σ_xy||²_F / (||Σ_xx||_F ||Σ_yy||_F) = 1 / (2 · 1) = 0.5, estimated from 16384 examples
    streamed in minibatches of 64."""
    streaming = MinibatchCKA()
    for _ in range(256):
        x = torch.randn(64, 4, generator=generator, dtype=torch.float64)
        streaming.update([x], [x[:, :1]])
    assert float(streaming.compute()[0, 0]) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_constant_features_give_zero_with_a_warning(generator, kernel, debiased):
    x = torch.randn(12, 5, generator=generator)
    constant = torch.full((12, 3), 0.1)
    with pytest.warns(RuntimeWarning, match="reported as 0 for x"):
        assert cka(constant, x, kernel=kernel, debiased=debiased) == 0.0
    with pytest.warns(RuntimeWarning, match=r"reported as 0 for acts_a\[1\]"):
        matrix = cka_matrix([x, constant, x[:, :2]], kernel=kernel, debiased=debiased)
    assert not matrix.isnan().any()
    assert (matrix[1] == 0).all() and (matrix[:, 1] == 0).all()
    assert float(matrix[0, 2]) == pytest.approx(cka(x, x[:, :2], kernel=kernel, debiased=debiased), rel=1e-12)


def test_minibatch_constant_layer_gives_zero_with_a_warning(generator):
    streaming = MinibatchCKA()
    for _ in range(3):
        streaming.update([torch.randn(8, 4, generator=generator, dtype=torch.float64), torch.zeros(8, 2)])
    with pytest.warns(RuntimeWarning, match=r"acts_a\[1\]"):
        matrix = streaming.compute()
    assert float(matrix[0, 0]) == pytest.approx(1.0) and (matrix[1] == 0).all()


def test_rbf_with_mostly_coincident_examples_is_an_error(generator):
    x = torch.zeros(10, 3)
    x[0] = torch.randn(3, generator=generator)
    with pytest.raises(ValueError, match="median distance"):
        cka(x, torch.randn(10, 2, generator=generator), kernel="rbf")


def test_bad_input_is_rejected_with_a_clear_error(generator):
    x = torch.randn(10, 4, generator=generator)
    with pytest.raises(ValueError, match="same N examples"):
        cka(x, torch.randn(9, 4, generator=generator))
    with pytest.raises(ValueError, match="same N examples"):
        cka_matrix([x, x[:8]])
    nan_row = x.clone()
    nan_row[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values .* rows \[3\]"):
        cka(x, nan_row)
    with pytest.raises(ValueError, match=r"NaN or infinite values .* rows \[3\]"):
        cka_matrix([x], [nan_row])
    with pytest.raises(ValueError, match="at least 4"):
        cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="at least 2"):
        cka(x[:1], x[:1])
    with pytest.raises(ValueError, match="at least 4"):
        hsic(gram(x[:3]), gram(x[:3]), debiased=True)
    with pytest.raises(ValueError, match="square"):
        hsic(x, x)
    with pytest.raises(ValueError, match="same N examples"):
        hsic(gram(x), gram(x[:5]))
    with pytest.raises(ValueError, match="kernel must be one of"):
        cka(x, x, kernel="cosine")
    with pytest.raises(ValueError, match="sigma"):
        cka(x, x, kernel="rbf", sigma=0.0)
    with pytest.raises(ValueError, match="debiased=True"):
        cka_matrix([x], batch_size=8)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 4"):
        cka_matrix([x], debiased=True, batch_size=2)
    with pytest.raises(TypeError, match="list of activation tensors"):
        cka_matrix(x)
    with pytest.raises(ValueError, match="empty"):
        cka_matrix([])
    with pytest.raises(TypeError, match="torch.Tensor"):
        cka(x.numpy(), x)
    with pytest.raises(ValueError, match="before any update"):
        MinibatchCKA().compute()
    streaming = MinibatchCKA()
    streaming.update([x, x])
    with pytest.raises(ValueError, match="same layers as the first"):
        streaming.update([x])
    with pytest.raises(ValueError, match="at least 4"):
        streaming.update([x[:3], x[:3]])


@pytest.mark.cuda
@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_cuda_matches_cpu(generator, debiased):
    acts = [torch.randn(256, 32, generator=generator) for _ in range(3)]
    acts.append(torch.relu(acts[0] @ torch.randn(32, 16, generator=generator)))
    for kernel in KERNELS:
        expected = cka_matrix(acts, kernel=kernel, debiased=debiased)
        computed = cka_matrix([a.cuda() for a in acts], kernel=kernel, debiased=debiased)
        assert computed.device.type == "cuda" and computed.dtype == torch.float32
        torch.testing.assert_close(computed.cpu().double(), expected, rtol=0, atol=1e-4)
    if debiased:
        expected = cka_matrix(acts, debiased=True, batch_size=64)
        computed = cka_matrix([a.cuda() for a in acts], debiased=True, batch_size=64)
        torch.testing.assert_close(computed.cpu().double(), expected, rtol=0, atol=1e-4)
