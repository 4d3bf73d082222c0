"""Two-dimensional pictures of a layer's representation: t-SNE (van der Maaten & Hinton
2008) of the activations, coloured by class in :func:`locallearn.analysis.plots.plot_embeddings`."""

from __future__ import annotations

import numpy as np
import torch


def tsne_embedding(features: torch.Tensor | np.ndarray, *, n_components: int = 2, perplexity: float = 30.0,
                   max_samples: int = 2000, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE of ``features`` (N examples, any trailing shape, flattened to N × D) with
    scikit-learn's Barnes-Hut TSNE (PCA initialisation). t-SNE costs O(N log N) per
    iteration, so above ``max_samples`` examples a subset of that size is drawn without
    replacement by a generator seeded with ``random_state``. Returns the embedding
    (n × ``n_components``, float64) and the sorted indices of the examples it holds."""
    from sklearn.manifold import TSNE

    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim < 2:
        raise ValueError(f"features must be (examples, ...) with at least 2 dimensions, got shape {features.shape}")
    if len(features) < 2 or features[0].size == 0:
        raise ValueError(f"t-SNE needs at least 2 examples of at least 1 feature, got shape {features.shape}")
    features = features.reshape(len(features), -1)
    if n_components not in (1, 2, 3):
        raise ValueError(f"n_components must be 1, 2 or 3 (Barnes-Hut t-SNE), got {n_components}")
    if max_samples < 2:
        raise ValueError(f"max_samples must be at least 2, got {max_samples}")
    if not np.isfinite(features).all():
        raise ValueError("features hold NaN or infinite values; t-SNE needs finite activations")
    indices = np.arange(len(features))
    if len(features) > max_samples:
        indices = np.sort(np.random.default_rng(random_state).choice(len(features), max_samples, replace=False))
    if not 0 < perplexity < len(indices):
        raise ValueError(f"perplexity must be positive and below the number of examples embedded "
                         f"({len(indices)}), got {perplexity}; t-SNE's usual range is 5 to 50")
    embedding = TSNE(n_components=n_components, perplexity=perplexity, init="pca", learning_rate="auto",
                     random_state=random_state).fit_transform(features[indices])
    return embedding.astype(np.float64), indices
