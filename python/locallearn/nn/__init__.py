"""Layers the learning rules are built from: local heads, feedback layers and
locally-connected layers."""

from locallearn.nn.feedback import (Conv2dFeedbackAlignment, DirectFeedback, LinearFeedbackAlignment,
                                    LocallyConnectedFeedbackAlignment, convert_to_feedback_alignment,
                                    feedback_columns)
from locallearn.nn.local_heads import PredictionHead, SimilarityHead, pooled_size
from locallearn.nn.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d

__all__ = ["Conv2dFeedbackAlignment", "DirectFeedback", "LinearFeedbackAlignment", "LocallyConnected2d",
           "LocallyConnectedFeedbackAlignment", "LocallyConnectedTranspose2d", "PredictionHead", "SimilarityHead",
           "convert_to_feedback_alignment", "feedback_columns", "pooled_size"]
