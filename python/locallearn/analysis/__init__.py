"""Measuring what networks learn: TwoNN intrinsic dimension over exact nearest
neighbours (seed 000 §III-A), CKA and RSA between layers (seed 000 §III-B), class
separation (seed 001 §3.2), the angle between a rule's update and backprop's (seed 002
Fig. 1a), t-SNE embeddings, their figures, and `analyze_run` behind `locallearn analyze`."""

from locallearn.analysis.alignment import angle_between, discrepancy_history, total_discrepancy, update_alignment
from locallearn.analysis.cka import MinibatchCKA, cka, cka_matrix, gram, hsic
from locallearn.analysis.embedding import tsne_embedding
from locallearn.analysis.intrinsic_dimension import TwoNN, id_profile, twonn_dimension
from locallearn.analysis.neighbors import nearest_neighbors
from locallearn.analysis.plots import plot_embeddings, plot_heatmap, plot_id_profile
from locallearn.analysis.report import analyze_run, collect_activations
from locallearn.analysis.rsa import rdm, rsa, rsa_matrix
from locallearn.analysis.separation import ClassSeparation, class_separation

__all__ = ["ClassSeparation", "MinibatchCKA", "TwoNN", "analyze_run", "angle_between", "cka", "cka_matrix",
           "class_separation", "collect_activations", "discrepancy_history", "gram", "hsic", "id_profile",
           "nearest_neighbors", "plot_embeddings", "plot_heatmap", "plot_id_profile", "rdm", "rsa", "rsa_matrix",
           "total_discrepancy", "tsne_embedding", "twonn_dimension", "update_alignment"]
