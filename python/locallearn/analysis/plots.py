"""The analysis figures as PNG files: the intrinsic-dimension profile across layers
(the "hunchback" of Ansuini et al. 2019), CKA / RSA heatmaps and t-SNE panels.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no global backend is
set and nothing opens a window; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

DPI = 120


def plot_id_profile(dimensions: Sequence[float], intervals: Sequence[tuple[float, float]],
                    layer_names: Sequence[str], path: str | Path, *, title: str = "Intrinsic dimension") -> Path:
    """The intrinsic dimension of each layer's representation, in layer order, with its
    95% confidence interval (low, high) as an error bar. Writes a PNG; returns ``path``."""
    dimensions = np.asarray(_numpy(dimensions), dtype=np.float64)
    intervals = np.asarray(_numpy(intervals), dtype=np.float64)
    if dimensions.ndim != 1 or len(dimensions) == 0:
        raise ValueError(f"dimensions must be a non-empty list of numbers, got shape {dimensions.shape}")
    if len(layer_names) != len(dimensions):
        raise ValueError(f"{len(dimensions)} dimensions but {len(layer_names)} layer names")
    if intervals.shape != (len(dimensions), 2):
        raise ValueError(f"intervals must be one (low, high) pair per layer, shape ({len(dimensions)}, 2), "
                         f"got shape {intervals.shape}")
    if (intervals[:, 0] > intervals[:, 1]).any():
        raise ValueError("every interval must be (low, high) with low <= high")
    figure = _figure(max(4.0, 0.6 * len(dimensions) + 2), 3.5)
    axes = figure.subplots()
    positions = np.arange(len(dimensions))
    axes.plot(positions, dimensions, "o-", color="tab:blue", label="estimate")
    axes.errorbar(positions, intervals.mean(axis=1), yerr=np.diff(intervals, axis=1).ravel() / 2, fmt="none",
                  ecolor="tab:blue", alpha=0.6, capsize=4, label="95% interval")
    crowded = len(dimensions) > 6
    axes.set_xticks(positions, list(layer_names), rotation=45 if crowded else 0, ha="right" if crowded else "center")
    axes.set_ylabel("intrinsic dimension")
    axes.set_title(title)
    axes.legend(frameon=False)
    return _save(figure, path)


def plot_heatmap(matrix, row_names: Sequence[str], col_names: Sequence[str], title: str,
                 path: str | Path) -> Path:
    """A matrix of similarities between layers (CKA, RSA) with its values written in the
    cells when it is small enough to read them. Writes a PNG; returns ``path``."""
    matrix = np.asarray(_numpy(matrix), dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
    if matrix.shape != (len(row_names), len(col_names)):
        raise ValueError(f"matrix has shape {matrix.shape} but there are {len(row_names)} row names and "
                         f"{len(col_names)} column names")
    rows, columns = matrix.shape
    figure = _figure(max(4.0, 0.5 * columns + 2.5), max(3.5, 0.5 * rows + 1.5))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes)
    axes.set_xticks(np.arange(columns), list(col_names), rotation=45, ha="right")
    axes.set_yticks(np.arange(rows), list(row_names))
    if rows * columns <= 144:
        middle = np.nanmean(matrix) if np.isfinite(matrix).any() else 0.0
        for (row, column), value in np.ndenumerate(matrix):
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="black" if value > middle else "white")
    axes.set_title(title)
    return _save(figure, path)


def plot_embeddings(embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                    columns: int = 4) -> Path:
    """One scatter panel per entry (name → (points N × 2, integer class labels N)),
    points coloured by class with one colour per class across all panels. Writes a PNG;
    returns ``path``."""
    if not embeddings:
        raise ValueError("embeddings is empty: give at least one name → (points, labels)")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    panels = {}
    for name, entry in embeddings.items():
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"embeddings[{name!r}] must be a (points, labels) pair")
        points, labels = (_numpy(array) for array in entry)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"embeddings[{name!r}]: points must be N × 2, got shape {points.shape}")
        if labels.shape != (len(points),):
            raise ValueError(f"embeddings[{name!r}]: {len(points)} points but labels of shape {labels.shape}")
        panels[name] = (points, labels)
    classes = np.unique(np.concatenate([labels for _, labels in panels.values()]))
    import matplotlib

    colormap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    colour_of = {label: colormap(index % colormap.N) for index, label in enumerate(classes)}
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = _figure(3.2 * columns, 3.2 * rows)
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, (name, (points, labels)) in zip(grid, panels.items()):
        axes.scatter(points[:, 0], points[:, 1], s=4, c=[colour_of[label] for label in labels], linewidths=0)
        axes.set_title(name, fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    for axes in grid[len(panels):]:
        axes.set_visible(False)
    if len(classes) <= 20:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", color=colour_of[label], label=str(label))
                   for label in classes]
        figure.legend(handles=handles, loc="outside right center", frameon=False, title="class")
    return _save(figure, path)


def _numpy(array) -> np.ndarray:
    """A NumPy copy of a tensor or array-like (tensors moved to the CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _figure(width: float, height: float):
    """A figure (size in inches) on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
