"""locallearn: deep networks trained with local learning rules, with fused ops.

The public ops live in :mod:`locallearn.ops`; ``locallearn info`` on the command
line says whether the compiled extension is built and which devices it serves.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("locallearn")  # with the wheel's variant, e.g. 0.1.0+cu130
except PackageNotFoundError:  # running from a source tree that is not installed
    from locallearn._version import __version__

from locallearn.ops import channel_std, similarity_matching_loss, similarity_matrix

__all__ = ["__version__", "channel_std", "similarity_matching_loss", "similarity_matrix"]
