"""Centered kernel alignment (CKA) between layer representations.

Seed 000 §III-B compares layers with CKA (Kornblith et al. 2019, "Similarity of neural
network representations revisited"): for Gram matrices K, L of the same N examples and the
centring matrix H = I - 11ᵀ/N,

    CKA(K, L) = <vec(HKH), vec(HLH)> / (||HKH||_F ||HLH||_F)          (seed 000, eqs. (4)-(5))

(eq. (5) in the seed prints HKH twice in the numerator; the second factor is HLH). With the
linear kernel the numerator is ||XᵀY||_F² of centred features (eq. (3)).

HSIC estimators, both a Frobenius inner product of "centred" Gram matrices, so a whole
layers × layers matrix is one matmul of flattened centred Gram matrices:

- biased: tr(KHLH) / (N-1)² = <HKH, HLH> / (N-1)² (Gretton et al. 2005);
- debiased: the unbiased U-statistic of Song et al. (2012),
  [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((N-1)(N-2)) - 2/(N-2) 1ᵀK̃L̃1] / (N(N-3)) with K̃, L̃ the Gram
  matrices with zeroed diagonals, which equals <U(K), U(L)> / (N(N-3)) for the U-centred
  matrices U(·) of Székely & Rizzo (2014). Nguyen, Raghu & Kornblith (2021, "Do wide and
  deep networks learn the same things?") average it over minibatches so that N is not
  bounded by the memory of one N×N Gram matrix (`MinibatchCKA`, `cka_matrix(batch_size=)`).

Precision: everything is computed on the activations' device, in float64 on CPU or for
float64 input and in float32 on other devices (GPUs are slow at float64); features are
centred before a Gram matrix is formed, which removes most of the cancellation.
A representation whose HSIC with itself is zero (every example has the same features) has
no defined CKA: it is reported as 0 with a warning, never NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["MinibatchCKA", "cka", "cka_matrix", "gram", "hsic"]

Kernel = Literal["linear", "rbf"]
KERNELS = ("linear", "rbf")
SYMMETRY_TOLERANCE = 1e-4
"""How far, relative to its largest entry, a matrix hsic() takes may be from symmetric
(a float32 product x xᵀ is symmetric only to rounding)."""


def gram(x: Tensor, kernel: Kernel = "linear", *, sigma: float = 0.8) -> Tensor:
    """Gram matrix K_ij = k(x_i, x_j) of the N examples of x (shape (N, ...), flattened).

    linear: x_iᵀx_j (seed 000, eq. (3)); rbf: exp(-||x_i - x_j||² / (2 s²)) with bandwidth
    s = sigma × the median distance between distinct examples (Kornblith et al. 2019).
    """
    _check_kernel(kernel, sigma)
    features = _feature_matrix(x, "x", min_examples=1)
    if kernel == "linear":
        return features @ features.T
    return _rbf_gram(_centred_features(features), sigma, "x")


def hsic(k: Tensor, l: Tensor, *, debiased: bool = False) -> float:
    """HSIC of two symmetric N×N Gram matrices: tr(KHLH)/(N-1)² (biased) or the unbiased
    estimator of Song et al. (2012) (debiased, N >= 4); see the module docstring."""
    min_examples = 4 if debiased else 2
    for name, matrix in (("k", k), ("l", l)):
        if not isinstance(matrix, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor Gram matrix, got {type(matrix).__name__}")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"{name} must be a square (N, N) Gram matrix, got shape {tuple(matrix.shape)}")
    if k.shape != l.shape:
        raise ValueError(f"k and l must be Gram matrices of the same N examples, got {tuple(k.shape)} and "
                         f"{tuple(l.shape)}")
    if k.device != l.device:
        raise ValueError(f"k and l must be on one device, got {k.device} and {l.device}")
    k_matrix = _feature_matrix(k, "k", min_examples)
    l_matrix = _feature_matrix(l, "l", min_examples)
    for name, matrix in (("k", k_matrix), ("l", l_matrix)):
        if (matrix - matrix.T).abs().max() > SYMMETRY_TOLERANCE * matrix.abs().max():
            raise ValueError(f"{name} is not symmetric, so it is not a Gram matrix; build one with gram()")
    n = k.shape[0]
    centre = _u_centre if debiased else _double_centre
    inner = (centre(k_matrix) * centre(l_matrix)).sum()
    return float(inner / (n * (n - 3) if debiased else (n - 1) ** 2))


def cka(x: Tensor, y: Tensor, *, kernel: Kernel = "linear", debiased: bool = False, sigma: float = 0.8) -> float:
    """CKA (seed 000, eq. (5)) between two representations of the same N examples, each of
    shape (N, ...) and flattened to (N, features); in [0, 1] for the biased estimator."""
    _check_kernel(kernel, sigma)
    min_examples = 4 if debiased else 2
    features_x = _feature_matrix(x, "x", min_examples)
    features_y = _feature_matrix(y, "y", min_examples)
    (_, features_x), (_, features_y) = _same_examples([("x", features_x), ("y", features_y)])
    gram_x = _centred_gram(features_x, kernel, sigma, debiased, "x")
    gram_y = _centred_gram(features_y, kernel, sigma, debiased, "y")
    cross = (gram_x * gram_y).sum().reshape(1, 1)
    self_x = (gram_x * gram_x).sum().reshape(1)
    self_y = (gram_y * gram_y).sum().reshape(1)
    return float(_normalise(cross, self_x, self_y, ["x"], ["y"])[0, 0])


def cka_matrix(acts_a: Sequence[Tensor], acts_b: Sequence[Tensor] | None = None, *, kernel: Kernel = "linear",
               debiased: bool = False, sigma: float = 0.8, batch_size: int | None = None) -> Tensor:
    """CKA between every layer of acts_a and every layer of acts_b (or of acts_a itself when
    acts_b is None): a (La, Lb) tensor on the activations' device.

    Each activation is (N, ...) for the same N examples. All centred Gram matrices are formed
    once and every pair comes from one matmul of their flattened stack (memory L × N² values).
    With kernel="rbf" each layer's bandwidth comes from its own median distance.
    With batch_size, the N examples are split into N // batch_size contiguous minibatches of at
    least batch_size examples and the debiased linear HSIC is averaged over them (Nguyen et al.
    2021; see `MinibatchCKA`, float64 result); shuffle the examples first (the same permutation
    for every layer) if they are sorted, e.g. by class.
    """
    _check_kernel(kernel, sigma)
    if batch_size is None:
        min_examples = 4 if debiased else 2
    else:
        if kernel != "linear" or not debiased:
            raise ValueError("batch_size needs kernel='linear' and debiased=True: minibatch averaging is consistent "
                             "only for the unbiased HSIC estimator (Nguyen et al. 2021)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 4:
            raise ValueError(f"batch_size must be an integer >= 4 (the debiased HSIC needs 4 examples), "
                             f"got {batch_size!r}")
        min_examples = 4
    layers_a = _layer_features(acts_a, "acts_a", min_examples)
    layers_b = None if acts_b is None else _layer_features(acts_b, "acts_b", min_examples)
    layers = _same_examples(layers_a + (layers_b or []))
    split = len(layers_a)
    layers_a, layers_b = layers[:split], None if layers_b is None else layers[split:]
    if batch_size is not None:
        num_batches = max(1, layers[0][1].shape[0] // batch_size)
        chunked = [(name, features.tensor_split(num_batches)) for name, features in layers]
        accumulator = MinibatchCKA()
        for index in range(num_batches):
            batch = [(name, chunks[index]) for name, chunks in chunked]
            accumulator._accumulate(batch[:split], None if layers_b is None else batch[split:])
        return accumulator.compute()
    grams_a = _stacked_centred_grams(layers_a, kernel, sigma, debiased)
    grams_b = grams_a if layers_b is None else _stacked_centred_grams(layers_b, kernel, sigma, debiased)
    self_a = (grams_a * grams_a).sum(dim=1)
    self_b = self_a if layers_b is None else (grams_b * grams_b).sum(dim=1)
    names_a = [name for name, _ in layers_a]
    names_b = names_a if layers_b is None else [name for name, _ in layers_b]
    return _normalise(grams_a @ grams_b.T, self_a, self_b, names_a, names_b)


class MinibatchCKA:
    """Linear CKA from the debiased HSIC averaged over minibatches (Nguyen, Raghu &
    Kornblith 2021): call `update` with each minibatch's activations (every layer, the same
    examples; within one network when acts_b is None), then `compute` for the (La, Lb) float64
    matrix. Memory is L × batch² values, whatever the total number of examples.
    """

    def __init__(self) -> None:
        self._cross: Tensor | None = None
        self._self_a: Tensor | None = None
        self._self_b: Tensor | None = None
        self._names_a: list[str] = []
        self._names_b: list[str] = []
        self._within = False
        self.num_batches = 0

    def update(self, acts_a: Sequence[Tensor], acts_b: Sequence[Tensor] | None = None) -> None:
        """Add one minibatch (at least 4 examples) of every layer's activations."""
        layers_a = _layer_features(acts_a, "acts_a", min_examples=4)
        layers_b = None if acts_b is None else _layer_features(acts_b, "acts_b", min_examples=4)
        layers = _same_examples(layers_a + (layers_b or []))
        self._accumulate(layers[:len(layers_a)], None if layers_b is None else layers[len(layers_a):])

    def compute(self) -> Tensor:
        """The (La, Lb) CKA matrix of everything added so far."""
        if self._cross is None:
            raise ValueError("MinibatchCKA.compute() before any update(): add at least one minibatch")
        return _normalise(self._cross, self._self_a, self._self_b, self._names_a, self._names_b)

    def _accumulate(self, layers_a: list[tuple[str, Tensor]], layers_b: list[tuple[str, Tensor]] | None) -> None:
        within = layers_b is None
        shape = (len(layers_a), len(layers_a) if within else len(layers_b))
        if self._cross is not None and (within != self._within or shape != tuple(self._cross.shape)):
            raise ValueError(f"every update must have the same layers as the first: it had a "
                             f"{tuple(self._cross.shape)} {'within' if self._within else 'across'}-network matrix, "
                             f"this one a {shape} {'within' if within else 'across'}-network matrix")
        device = layers_a[0][1].device
        if self._cross is not None and device != self._cross.device:
            raise ValueError(f"every update must be on one device: the first was on {self._cross.device}, "
                             f"this one is on {device}")
        n = layers_a[0][1].shape[0]
        scale = 1.0 / (n * (n - 3))
        grams_a = _stacked_centred_grams(layers_a, kernel="linear", sigma=0.8, debiased=True)
        grams_b = grams_a if within else _stacked_centred_grams(layers_b, kernel="linear", sigma=0.8, debiased=True)
        # The (La, Lb) sums are kept in float64 on every device: many float32 minibatches add up.
        cross = (grams_a @ grams_b.T * scale).double()
        self_a = ((grams_a * grams_a).sum(dim=1) * scale).double()
        self_b = self_a if within else ((grams_b * grams_b).sum(dim=1) * scale).double()
        if self._cross is None:
            self._cross, self._self_a, self._self_b, self._within = cross, self_a, self_b, within
            self._names_a = [name for name, _ in layers_a]
            self._names_b = self._names_a if within else [name for name, _ in layers_b]
        else:
            self._cross, self._self_a, self._self_b = self._cross + cross, self._self_a + self_a, self._self_b + self_b
        self.num_batches += 1


def _check_kernel(kernel: str, sigma: float) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
        raise ValueError(f"sigma (the RBF bandwidth as a fraction of the median distance) must be a positive "
                         f"finite number, got {sigma!r}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 on CPU or for float64 input; float32 elsewhere (see the module docstring)."""
    return torch.float64 if x.dtype == torch.float64 or x.device.type == "cpu" else torch.float32


def _feature_matrix(x: Tensor, name: str, min_examples: int) -> Tensor:
    """x (N, ...) as a finite (N, features) matrix in the compute dtype, or a clear error."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, ...), got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (N, ...) with one row per example, got a scalar")
    if x.shape[0] < min_examples:
        raise ValueError(f"{name} has {x.shape[0]} examples; this estimate needs at least {min_examples}")
    features = x.reshape(x.shape[0], -1).to(_compute_dtype(x))
    finite_rows = torch.isfinite(features).all(dim=1)
    if not bool(finite_rows.all()):
        bad_rows = (~finite_rows).nonzero().flatten()
        raise ValueError(f"{name} has NaN or infinite values in {bad_rows.numel()} rows, e.g. rows "
                         f"{bad_rows[:5].tolist()}; drop or fix those examples first")
    return features


def _layer_features(acts: Sequence[Tensor], name: str, min_examples: int) -> list[tuple[str, Tensor]]:
    if isinstance(acts, Tensor) or not isinstance(acts, Sequence):
        raise TypeError(f"{name} must be a list of activation tensors (one (N, ...) tensor per layer), "
                        f"got {type(acts).__name__}")
    if len(acts) == 0:
        raise ValueError(f"{name} is empty: pass at least one layer's activations")
    return [(f"{name}[{index}]", _feature_matrix(x, f"{name}[{index}]", min_examples)) for index, x in enumerate(acts)]


def _same_examples(layers: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """Check that all layers hold the same N examples on one device; cast them to one dtype."""
    first_name, first = layers[0]
    for name, features in layers[1:]:
        if features.shape[0] != first.shape[0]:
            raise ValueError(f"{first_name} and {name} must hold the same N examples, got {first.shape[0]} and "
                             f"{features.shape[0]} rows")
        if features.device != first.device:
            raise ValueError(f"{first_name} and {name} must be on one device, got {first.device} and "
                             f"{features.device}")
    dtype = torch.float64 if any(features.dtype == torch.float64 for _, features in layers) else first.dtype
    return [(name, features.to(dtype)) for name, features in layers]


def _centred_features(features: Tensor) -> Tensor:
    """Features minus their mean, shifted by the first example first so that identical
    examples give exact zeros (a translation does not change either kernel's centred Gram)."""
    shifted = features - features[:1]
    return shifted - shifted.mean(dim=0, keepdim=True)


def _rbf_gram(centred: Tensor, sigma: float, name: str) -> Tensor:
    squared_norms = (centred * centred).sum(dim=1)
    squared_distances = (squared_norms[:, None] + squared_norms[None, :] - 2 * centred @ centred.T).clamp_min_(0)
    squared_distances.fill_diagonal_(0)
    pairs = squared_distances[torch.ones_like(squared_distances, dtype=torch.bool).triu_(1)]
    if not bool(pairs.any()):  # every example is the same point (or N = 1): K = 11ᵀ
        return torch.ones_like(squared_distances)
    distances = pairs.sqrt().sort().values
    median = (distances[(distances.numel() - 1) // 2] + distances[distances.numel() // 2]) / 2
    if float(median) <= torch.finfo(centred.dtype).eps ** 0.5 * float(distances[-1]):
        raise ValueError(f"{name}: the median distance between examples is (about) zero, so the RBF bandwidth "
                         f"sigma × median distance is undefined: more than half of the pairs of examples coincide; "
                         f"use kernel='linear' or remove duplicate examples")
    return torch.exp(-squared_distances / (2 * (sigma * median) ** 2))


def _centred_gram(features: Tensor, kernel: str, sigma: float, debiased: bool, name: str) -> Tensor:
    """HKH (biased) or the U-centred Gram matrix (debiased); exact zeros for constant features."""
    centred = _centred_features(features)
    if not bool(centred.any()):
        return centred.new_zeros(centred.shape[0], centred.shape[0])
    k = centred @ centred.T if kernel == "linear" else _rbf_gram(centred, sigma, name)
    return _u_centre(k) if debiased else _double_centre(k)


def _stacked_centred_grams(layers: list[tuple[str, Tensor]], kernel: str, sigma: float, debiased: bool) -> Tensor:
    """(L, N²): every layer's centred Gram matrix, flattened, in one tensor."""
    n = layers[0][1].shape[0]
    stacked = layers[0][1].new_empty(len(layers), n * n)
    for row, (name, features) in zip(stacked, layers):
        row.copy_(_centred_gram(features, kernel, sigma, debiased, name).flatten())
    return stacked


def _double_centre(k: Tensor) -> Tensor:
    """HKH for H = I - 11ᵀ/N."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def _u_centre(k: Tensor) -> Tensor:
    """U-centring (Székely & Rizzo 2014): <U(K), U(L)> / (N(N-3)) is Song et al.'s unbiased HSIC."""
    n = k.shape[0]
    k = k.clone()
    k.fill_diagonal_(0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    u = k - means[:, None] - means[None, :]
    u.fill_diagonal_(0)
    return u


def _normalise(cross: Tensor, self_a: Tensor, self_b: Tensor, names_a: list[str], names_b: list[str]) -> Tensor:
    """cross_ij / sqrt(self_a_i self_b_j), with 0 (and a warning) where a self-HSIC is zero."""
    degenerate_a, degenerate_b = self_a <= 0, self_b <= 0
    if bool(degenerate_a.any()) or bool(degenerate_b.any()):
        names = sorted({names_a[i] for i in degenerate_a.nonzero().flatten().tolist()}
                       | {names_b[j] for j in degenerate_b.nonzero().flatten().tolist()})
        warnings.warn(f"CKA is reported as 0 for {', '.join(names)}: zero HSIC with itself (every example has the "
                      f"same features)", RuntimeWarning, stacklevel=3)
    denominator = (self_a.clamp_min(0)[:, None] * self_b.clamp_min(0)[None, :]).sqrt()
    return torch.where(denominator > 0, cross / torch.where(denominator > 0, denominator, 1), 0)
