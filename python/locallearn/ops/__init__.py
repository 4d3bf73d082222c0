"""Fused ops with pure-PyTorch references (:mod:`locallearn.ops.reference`).

Each public function validates its input, then runs the native op from
``locallearn._C`` when it serves the tensor's device, else the reference.
"""

from locallearn.ops.channel_std import channel_std
from locallearn.ops.difference_target import DIFFERENCE_TARGET_ACTIVATIONS, difference_target
from locallearn.ops.direct_feedback import direct_feedback
from locallearn.ops.locally_connected import (
    locally_connected2d,
    locally_connected2d_transpose,
    locally_connected2d_weight_grad,
    locally_connected_output_size,
)
from locallearn.ops.similarity_matching import similarity_matching_loss, similarity_matrix

NATIVE_OPS = (
    "similarity_matching_loss",
    "channel_std",
    "locally_connected2d",
    "locally_connected2d_transpose",
    "locally_connected2d_weight_grad",
    "difference_target",
    "direct_feedback",
)
"""Names of the ops in the ``locallearn`` dispatcher namespace."""

__all__ = [
    "DIFFERENCE_TARGET_ACTIVATIONS",
    "NATIVE_OPS",
    "channel_std",
    "difference_target",
    "direct_feedback",
    "locally_connected2d",
    "locally_connected2d_transpose",
    "locally_connected2d_weight_grad",
    "locally_connected_output_size",
    "similarity_matching_loss",
    "similarity_matrix",
]
