"""Exact Euclidean k nearest neighbours of every row of a point matrix.

TwoNN (seed 000 §III-A, eqs. (1)-(2); Facco et al. 2017) needs each point's first two
neighbour distances r1 ≤ r2, and μ = r2/r1 is sensitive to small relative errors in
either, so every backend returns exact distances:

- "faiss": ``faiss.IndexFlatL2`` (``GpuIndexFlatL2`` for CUDA data when faiss has GPU
  support). faiss scores with the GEMM identity in float32, so it fetches a margin of extra
  candidates whose distances are then recomputed directly (as for "torch").
- "torch": tiled brute force, for the GPU (see `nearest_neighbors`).
- "cpu": scikit-learn's ``NearestNeighbors`` (KD-tree, ball tree or brute force; the
  brute force also uses the GEMM identity, so this backend too ranks a margin of extra
  candidates exactly).
- "auto": faiss when it imports and can serve the data's device, else "torch" for CUDA
  tensors, else "cpu".
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["BACKENDS", "CANDIDATE_DTYPES", "as_point_matrix", "candidate_precision", "inner_products",
           "nearest_neighbors"]

Backend = Literal["auto", "faiss", "torch", "cpu"]
BACKENDS = ("auto", "faiss", "torch", "cpu")

CandidatePrecision = Literal["bf16", "fp32", "fp64"]
CANDIDATE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}

_MIN_MARGIN = 32
"""Candidates kept beyond the k wanted: k + max(_MIN_MARGIN, k) per row."""

_CPU_MEMORY_BUDGET = 256 * 2**20
_CUDA_MEMORY_FRACTION = 0.2
_COLUMN_TILE = 8192

_ACCUMULATION_ROUNDOFF = 2.0**-22
"""Unit roundoff assumed for float32 accumulation: 2⁻²⁴ when rounding to nearest, 2⁻²³ when
truncating, as tensor cores may (Fasi et al. 2021), and a further factor of two."""
_ROUNDING_ERROR_LAMBDA = 8.0
"""λ of the probabilistic bound λ·√D·u on a length-D inner product (Higham & Mary 2019)."""


def as_point_matrix(points, *, name: str = "points") -> Tensor:
    """``points`` as a validated (N, D) float32 or float64 tensor on its own device.

    Accepts a tensor or anything ``numpy.asarray`` takes; integers and half precision
    become float32. Raises TypeError for non-numeric data and ValueError for a shape other
    than (N ≥ 1, D ≥ 1) or rows holding NaN or Inf.
    """
    if isinstance(points, Tensor):
        matrix = points.detach()
    else:
        array = np.asarray(points)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got a {type(points).__name__} of dtype {array.dtype}")
        matrix = torch.as_tensor(array)
    if matrix.dtype == torch.bool or matrix.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {matrix.dtype}")
    if matrix.dtype not in (torch.float32, torch.float64):
        matrix = matrix.float()
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N points, D features) array, got shape {tuple(matrix.shape)}; "
                         f"flatten each sample's features first, e.g. x.reshape(len(x), -1)")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must have at least one point and one feature, got shape {tuple(matrix.shape)}")
    finite_rows = torch.isfinite(matrix).all(dim=1)
    if not bool(finite_rows.all()):
        bad_rows = (~finite_rows).nonzero().flatten()
        raise ValueError(f"{name} has {len(bad_rows)} row(s) with NaN or Inf (first at row {int(bad_rows[0])}); "
                         f"drop or impute them first")
    return matrix


def nearest_neighbors(points, k: int, *, backend: Backend = "auto", exclude_self: bool = True,
                      batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact Euclidean k nearest neighbours of every row of ``points`` among its rows.

    Returns ``(distances, indices)``, both (N, k), sorted by increasing distance, on the
    device of ``points``: distances in float32 (float64 for float64 input), indices int64.
    With ``exclude_self`` a row's own index is never among its neighbours (an exact duplicate
    is, at distance 0). ``batch_size``: query rows per step of the "torch" and "faiss"
    backends (default: from a memory budget); scikit-learn chunks its own work.

    The "torch" backend tiles the N×N problem and never holds it: for a tile of query rows
    it forms squared distances ‖a‖² + ‖b‖² − 2abᵀ of the mean-centred points, one GEMM per
    column tile, on CUDA with bf16 inputs and float32 accumulation (tensor cores), else in
    float32, and keeps a running top-(k + margin) candidate set per row, merged with
    ``torch.topk``. The candidates' distances are then recomputed exactly, as direct
    differences, in float32 (float64 for float64 input), and re-sorted, so ratios such as
    TwoNN's r2/r1 carry no low-precision error.

    A low-precision pass can in principle miss a true neighbour whose low-precision
    distance fell outside the margin. So candidates are ranked by a lower bound of their
    true distance (each point's measured input rounding ‖ã − a‖ plus a probabilistic bound
    λ√D·u on float32 accumulation, Higham & Mary 2019), and a row is accepted only when the
    bound of every point left out is at least its exact k-th distance; rows that fail (near
    ties crowding past the margin) are redone with a float64 pass. Exact in practice: a
    miss needs an accumulation error beyond that bound, right at a near tie. The margin,
    max(32, k), only sets how often rows are redone: it must span the near-equal distances
    of high-dimensional data (r_(k+32)/r_k ≈ (1 + 32/k)^(1/d) for intrinsic dimension d)
    and costs little, as the exact recomputation is O(N·(k + margin)·D) against the
    pass's O(N²·D).
    """
    matrix = as_point_matrix(points)
    _check_k(k, len(matrix), exclude_self)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    chosen = _resolve_backend(backend, matrix.device)
    if chosen == "faiss":
        distances, indices = _faiss_neighbors(matrix, k, exclude_self, batch_size)
    elif chosen == "torch":
        distances, indices = _torch_neighbors(matrix, k, exclude_self, batch_size)
    else:
        distances, indices = _sklearn_neighbors(matrix, k, exclude_self)
    return distances.to(matrix.device, matrix.dtype), indices.to(matrix.device, torch.int64)


def _check_k(k: int, n_points: int, exclude_self: bool) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    needed = k + 1 if exclude_self else k
    if n_points < needed:
        own_row = " (each point's own row is excluded)" if exclude_self else ""
        raise ValueError(f"k={k} neighbours need at least {needed} points{own_row}, got {n_points}")


@functools.cache
def _faiss_module():
    """faiss, or None when it does not import."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def _faiss_has_gpu(faiss) -> bool:
    return hasattr(faiss, "GpuIndexFlatL2") and faiss.get_num_gpus() > 0


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")
    if backend != "auto":
        return backend
    faiss = _faiss_module()
    if faiss is not None and (device.type != "cuda" or _faiss_has_gpu(faiss)):
        return "faiss"
    return "torch" if device.type == "cuda" else "cpu"


def _candidate_count(k: int, n_columns: int) -> int:
    return min(k + max(_MIN_MARGIN, k), n_columns)


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(free_bytes * _CUDA_MEMORY_FRACTION)
    return _CPU_MEMORY_BUDGET


def _exact_distances(points: Tensor, rows: Tensor, candidates: Tensor, batch_size: int | None
                     ) -> tuple[Tensor, Tensor]:
    """Distances from ``points[rows]`` to ``points[candidates]`` as direct differences in the
    points' precision (no GEMM cancellation), sorted ascending with the candidates."""
    per_row_bytes = 2 * candidates.shape[1] * points.shape[1] * points.element_size()
    step = batch_size or max(1, _memory_budget(points.device) // per_row_bytes)
    distances = torch.empty(candidates.shape, dtype=points.dtype, device=points.device)
    for start in range(0, len(rows), step):
        block = slice(start, start + step)
        differences = points[rows[block]].unsqueeze(1) - points[candidates[block]]
        distances[block] = torch.linalg.vector_norm(differences, dim=-1)
    distances, order = distances.sort(dim=1, stable=True)
    return distances, candidates.gather(1, order)


def candidate_precision(device: torch.device) -> CandidatePrecision:
    """The precision of the "torch" backend's candidate pass on ``device``: bf16 on CUDA
    devices with bf16 tensor cores, else fp32 (those GPUs have no TF32 either, which would
    round the inputs behind the bound's back)."""
    bf16_tensor_cores = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16" if bf16_tensor_cores else "fp32"


def _torch_neighbors(points: Tensor, k: int, exclude_self: bool, batch_size: int | None,
                     precision: CandidatePrecision | None = None) -> tuple[Tensor, Tensor]:
    """The "torch" backend (see `nearest_neighbors`); ``precision`` of the candidate pass
    defaults to `candidate_precision`."""
    precision = precision or candidate_precision(points.device)
    n_points = len(points)
    n_candidates = _candidate_count(k, n_points - int(exclude_self))
    rows = torch.arange(n_points, device=points.device)
    distances, indices, lower_bound_outside = _candidate_pass(points, rows, n_candidates, exclude_self,
                                                              batch_size, precision)
    if precision != "fp64" and n_candidates < n_points - int(exclude_self):
        uncertain = (lower_bound_outside < distances[:, k - 1]).nonzero().flatten()
        if len(uncertain):
            distances[uncertain], indices[uncertain], _ = _candidate_pass(
                points, uncertain, n_candidates, exclude_self, batch_size, "fp64")
    return distances[:, :k], indices[:, :k]


def _candidate_pass(points: Tensor, rows: Tensor, n_candidates: int, exclude_self: bool,
                    batch_size: int | None, precision: CandidatePrecision) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``n_candidates`` columns per query row by a lower bound of their distance, at the
    given precision, then their exact distances, sorted.

    Returns (distances, indices, lower_bound_outside): no column left out of a row's
    candidates is closer to it than lower_bound_outside.
    """
    n_points, n_features = points.shape
    device = points.device
    pass_dtype = CANDIDATE_DTYPES[precision]
    accumulate_dtype = torch.float64 if precision == "fp64" else torch.float32
    budget = _memory_budget(device)
    column_tile = max(1, min(n_points, _COLUMN_TILE, budget // (24 * n_features)))
    rounded = _CentredRounding(points, pass_dtype, accumulate_dtype, column_tile)
    unit_roundoff = 2.0**-53 if precision == "fp64" else _ACCUMULATION_ROUNDOFF
    # |computed ‖ã−b̃‖² − exact ‖ã−b̃‖²| ≤ gamma·(‖ã‖² + ‖b̃‖²): norms and inner product each
    # err by λ√D·u of their sum of |terms|, plus the two final additions.
    gamma = (2 * _ROUNDING_ERROR_LAMBDA * math.sqrt(n_features) + 6) * unit_roundoff
    row_tile = batch_size or max(1, min(len(rows), budget // (8 * column_tile + 16 * n_features)))

    best_keys = torch.empty(len(rows), n_candidates, dtype=accumulate_dtype, device=device)
    best_indices = torch.empty(len(rows), n_candidates, dtype=torch.int64, device=device)
    for row_start in range(0, len(rows), row_tile):
        query_rows = rows[row_start:row_start + row_tile]
        queries = rounded.values(query_rows)
        query_norms = rounded.squared_norms[query_rows].unsqueeze(1) * (1 - gamma)
        keys = torch.full((len(query_rows), n_candidates), math.inf, dtype=accumulate_dtype, device=device)
        indices = torch.zeros((len(query_rows), n_candidates), dtype=torch.int64, device=device)
        for column_start in range(0, n_points, column_tile):
            column_stop = min(column_start + column_tile, n_points)
            columns = slice(column_start, column_stop)
            # lower bound of ‖a−b‖: √(computed ‖ã−b̃‖² − gamma(‖ã‖² + ‖b̃‖²)) − ρ_b, where ρ is
            # a point's rounding error ‖ã − a‖; the query's own ρ_a is subtracted after.
            tile = inner_products(queries, rounded.values(columns)).mul_(-2).add_(query_norms)
            tile.add_(rounded.squared_norms[columns].unsqueeze(0) * (1 - gamma))
            tile.clamp_min_(0).sqrt_().sub_(rounded.errors[columns].unsqueeze(0))
            if exclude_self:
                own_column = query_rows.unsqueeze(1) == torch.arange(column_start, column_stop, device=device)
                tile.masked_fill_(own_column, math.inf)
            tile_keys, tile_indices = tile.topk(min(n_candidates, column_stop - column_start), dim=1,
                                                largest=False, sorted=False)
            merged_keys = torch.cat([keys, tile_keys], dim=1)
            merged_indices = torch.cat([indices, tile_indices + column_start], dim=1)
            keys, order = merged_keys.topk(n_candidates, dim=1, largest=False, sorted=False)
            indices = merged_indices.gather(1, order)
        best_keys[row_start:row_start + len(query_rows)] = keys
        best_indices[row_start:row_start + len(query_rows)] = indices
    lower_bound_outside = best_keys.amax(dim=1) - rounded.errors[rows]
    distances, indices = _exact_distances(points, rows, best_indices, batch_size)
    return distances, indices, lower_bound_outside.to(points.dtype)


class _CentredRounding:
    """The points minus their mean, rounded to ``dtype`` block by block when asked (no
    rounded copy of the whole set is held), with each point's rounding error ρ = ‖ã − a‖ and
    squared norm ‖ã‖² in ``accumulate_dtype``. Centring leaves distances as they are but
    shrinks the norms that the GEMM identity cancels."""

    def __init__(self, points: Tensor, dtype: torch.dtype, accumulate_dtype: torch.dtype, block_size: int):
        self.points, self.dtype, self.accumulate_dtype = points, dtype, accumulate_dtype
        self.centre = points.mean(dim=0, dtype=torch.float64).to(accumulate_dtype)
        self.errors = torch.empty(len(points), dtype=accumulate_dtype, device=points.device)
        self.squared_norms = torch.empty(len(points), dtype=accumulate_dtype, device=points.device)
        for start in range(0, len(points), block_size):
            block = slice(start, start + block_size)
            rounded = self.values(block).double()
            exact = points[block].double() - self.centre.double()
            self.errors[block] = torch.linalg.vector_norm(rounded - exact, dim=1).to(accumulate_dtype)
            self.squared_norms[block] = rounded.pow(2).sum(dim=1).to(accumulate_dtype)

    def values(self, rows: Tensor | slice) -> Tensor:
        return (self.points[rows].to(self.accumulate_dtype) - self.centre).to(self.dtype)


@functools.cache
def _has_bf16_gemm_to_float32(device: torch.device) -> bool:
    """Whether ``torch.mm(..., out_dtype=torch.float32)`` serves bf16 on ``device``."""
    operand = torch.ones(1, 1, dtype=torch.bfloat16, device=device)
    try:
        torch.mm(operand, operand, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def inner_products(queries: Tensor, columns: Tensor) -> Tensor:
    """queries @ columnsᵀ, in float32 for bf16 inputs: a bf16 GEMM with float32 output where
    torch has one (CUDA), else the same exact products of bf16 values in a float32 GEMM
    (exact with TF32 on too: TF32 keeps 10 mantissa bits, bf16 values have 7)."""
    if queries.dtype != torch.bfloat16:
        return queries @ columns.T
    if _has_bf16_gemm_to_float32(queries.device):
        return torch.mm(queries, columns.T, out_dtype=torch.float32)
    return queries.float() @ columns.float().T


def _faiss_neighbors(points: Tensor, k: int, exclude_self: bool, batch_size: int | None
                     ) -> tuple[Tensor, Tensor]:
    faiss = _faiss_module()
    if faiss is None:
        raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or a faiss GPU build), "
                          "or use backend='torch' or 'cpu'")
    n_points, n_features = points.shape
    data = np.ascontiguousarray(points.detach().to("cpu", torch.float32).numpy())
    if points.is_cuda and _faiss_has_gpu(faiss):
        config = faiss.GpuIndexFlatConfig()
        config.device = points.device.index or 0
        resources = faiss.StandardGpuResources()  # must outlive the index
        index = faiss.GpuIndexFlatL2(resources, n_features, config)
    else:
        index = faiss.IndexFlatL2(n_features)
    index.add(data)
    # faiss scores with the float32 GEMM identity: fetch a margin, then rank exactly.
    n_candidates = _candidate_count(k + int(exclude_self), n_points)
    step = batch_size or n_points
    candidates = np.concatenate([index.search(data[start:start + step], n_candidates)[1]
                                 for start in range(0, n_points, step)])
    candidates = torch.from_numpy(candidates).to(points.device)
    rows = torch.arange(n_points, device=points.device)
    if exclude_self:
        keep = candidates != rows.unsqueeze(1)
        keep[keep.all(dim=1), -1] = False  # own row pushed out by duplicates: drop the last instead
        candidates = candidates[keep].view(n_points, n_candidates - 1)
    distances, indices = _exact_distances(points, rows, candidates, batch_size)
    return distances[:, :k], indices[:, :k]


def _sklearn_neighbors(points: Tensor, k: int, exclude_self: bool) -> tuple[Tensor, Tensor]:
    from sklearn.neighbors import NearestNeighbors

    data = points.detach().cpu().numpy()
    # Brute force scores with the GEMM identity, off by ~1e-7 near distance 0: fetch a
    # margin, then rank exactly. kneighbors() without X leaves each point out of its own list.
    n_candidates = _candidate_count(k, len(points) - int(exclude_self))
    model = NearestNeighbors(n_neighbors=n_candidates, algorithm="auto", n_jobs=-1).fit(data)
    _, candidates = model.kneighbors(None if exclude_self else data)
    rows = torch.arange(len(points), device=points.device)
    distances, indices = _exact_distances(points, rows, torch.from_numpy(candidates).to(points.device), None)
    return distances[:, :k], indices[:, :k]
