"""t-SNE embeddings (shapes, subsampling, separation of distinct classes) and the analysis
figures (PNG files of the expected size; bad inputs refused)."""

import numpy as np
import pytest
import torch

from locallearn.analysis.embedding import tsne_embedding
from locallearn.analysis.plots import DPI, plot_embeddings, plot_heatmap, plot_id_profile

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def two_blobs(per_class: int, dimension: int = 20, seed: int = 0):
    """Two Gaussian clouds of unit spread whose centres are 20 apart."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2 * per_class, dimension, generator=generator)
    features[per_class:, 0] += 20
    labels = torch.arange(2).repeat_interleave(per_class)
    return features, labels


def nearest_neighbour_agreement(points: np.ndarray, labels: np.ndarray) -> float:
    distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(1)] == labels).mean())


def test_tsne_separates_two_blobs():
    features, labels = two_blobs(60)
    embedding, indices = tsne_embedding(features.view(120, 4, 5), perplexity=10)  # trailing dims flattened
    assert embedding.shape == (120, 2) and embedding.dtype == np.float64
    np.testing.assert_array_equal(indices, np.arange(120))
    assert nearest_neighbour_agreement(embedding, labels.numpy()) > 0.95
    # The label-blind control: shuffled labels agree about half the time.
    shuffled = np.random.default_rng(0).permutation(labels.numpy())
    assert nearest_neighbour_agreement(embedding, shuffled) < 0.75


def test_tsne_subsamples_reproducibly():
    features, _ = two_blobs(100)
    embedding, indices = tsne_embedding(features.numpy(), n_components=3, perplexity=5, max_samples=50)
    assert embedding.shape == (50, 3) and indices.shape == (50,)
    assert len(np.unique(indices)) == 50 and np.all(np.diff(indices) > 0) and indices.max() < 200
    again, same_indices = tsne_embedding(features.numpy(), n_components=3, perplexity=5, max_samples=50)
    np.testing.assert_array_equal(indices, same_indices)
    np.testing.assert_allclose(embedding, again)
    _, other_indices = tsne_embedding(features.numpy(), perplexity=5, max_samples=50, random_state=1)
    assert not np.array_equal(indices, other_indices)


@pytest.mark.parametrize("kwargs, message", [
    ({"perplexity": 40}, "perplexity"),
    ({"perplexity": 0}, "perplexity"),
    ({"n_components": 4}, "n_components"),
    ({"max_samples": 1}, "max_samples"),
])
def test_tsne_bad_arguments(kwargs, message):
    features, _ = two_blobs(15)
    with pytest.raises(ValueError, match=message):
        tsne_embedding(features, **kwargs)


def test_tsne_bad_features():
    with pytest.raises(ValueError, match="2 dimensions"):
        tsne_embedding(torch.zeros(10))
    features, _ = two_blobs(15)
    features[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tsne_embedding(features, perplexity=5)


def read_png(path):
    """The image's pixel array, after checking that the file is a PNG."""
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(path)


def test_plot_id_profile(tmp_path):
    names = ["input", "block0", "block1", "block2", "output"]
    dimensions = [12.0, 18.5, 14.0, 9.0, 6.5]
    intervals = [(11.0, 13.0), (17.0, 20.0), (13.2, 15.1), (8.0, 10.0), (6.0, 7.5)]
    path = plot_id_profile(dimensions, intervals, names, tmp_path / "figures" / "id.png")
    assert path == tmp_path / "figures" / "id.png"
    image = read_png(path)
    assert image.shape[:2] == (round(3.5 * DPI), round(5 * DPI)) and image.std() > 0


def test_plot_heatmap(tmp_path):
    names = ["block0", "block1", "output"]
    matrix = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
    image = read_png(plot_heatmap(matrix, names, names, "linear CKA", tmp_path / "cka.png"))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


@pytest.mark.parametrize("count", [1, 5])
def test_plot_embeddings(tmp_path, count):
    rng = np.random.default_rng(0)
    embeddings = {f"layer {k}": (rng.normal(size=(50, 2)), rng.integers(0, 10, 50)) for k in range(count)}
    embeddings["layer 0"] = (torch.from_numpy(embeddings["layer 0"][0]), torch.from_numpy(embeddings["layer 0"][1]))
    image = read_png(plot_embeddings(embeddings, tmp_path / "deep" / "tsne.png", columns=4))
    rows, columns = (1, 1) if count == 1 else (2, 4)
    assert image.shape[:2] == (round(3.2 * rows * DPI), round(3.2 * columns * DPI)) and image.std() > 0


def test_plots_refuse_bad_input(tmp_path):
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="layer names"):
        plot_id_profile([1.0, 2.0], [(0.5, 1.5), (1.5, 2.5)], ["only one"], path)
    with pytest.raises(ValueError, match="intervals"):
        plot_id_profile([1.0, 2.0], [(0.5, 1.5)], ["a", "b"], path)
    with pytest.raises(ValueError, match="low <= high"):
        plot_id_profile([1.0, 2.0], [(0.5, 1.5), (2.5, 1.5)], ["a", "b"], path)
    with pytest.raises(ValueError, match="non-empty"):
        plot_id_profile([], [], [], path)
    with pytest.raises(ValueError, match="row names"):
        plot_heatmap(np.eye(3), ["a", "b"], ["a", "b", "c"], "cka", path)
    with pytest.raises(ValueError, match="2-D"):
        plot_heatmap(np.ones(3), ["a"], ["a", "b", "c"], "cka", path)
    with pytest.raises(ValueError, match="labels"):
        plot_embeddings({"a": (np.zeros((5, 2)), np.zeros(4))}, path)
    with pytest.raises(ValueError, match="N × 2"):
        plot_embeddings({"a": (np.zeros((5, 3)), np.zeros(5))}, path)
    with pytest.raises(ValueError, match="empty"):
        plot_embeddings({}, path)
    with pytest.raises(ValueError, match="pair"):
        plot_embeddings({"a": np.zeros((5, 2))}, path)
    assert not path.exists()
