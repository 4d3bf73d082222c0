"""What a network's output is trained to be: class scores (classification, every
paper's main task) or the input itself (reconstruction, the autoencoder of seed 003
§5.5). A :class:`~locallearn.models.Network` carries its task; rules take the output
loss, the error they report and the optimal output from it, and the trainer scores
the test set with it."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor
from torch.nn import functional as F


def at_least_float32(output: Tensor) -> Tensor:
    """``output`` in float32, or float64 for a float64 network (losses and errors at the
    network's precision, whatever autocast computed the output in)."""
    return output.to(torch.promote_types(output.dtype, torch.float32))


class Task(ABC):
    name: str = ""
    error_name: str = "error"
    """How progress messages name what :meth:`error` measures."""

    @abstractmethod
    def loss(self, output: Tensor, x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """The output loss of a batch: the mean over examples, or their sum."""

    @abstractmethod
    def error(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The figure of merit reported as ``train_error`` / ``test_error`` (0-d, detached)."""

    @abstractmethod
    def output_activity(self, output: Tensor) -> Tensor:
        """The output layer's activity, what an inverse of the output layer reads (SDTP)."""

    @abstractmethod
    def best_output(self, x: Tensor, y: Tensor) -> Tensor:
        """The output activity that minimises the loss, ĥ_L = argmin L (seed 003 §2.1.2)."""


class Classification(Task):
    """Cross-entropy of the logits over ``num_classes`` classes; error = the fraction
    misclassified; the activity is the class distribution softmax(logits) and its
    optimum the one-hot label."""

    name = "classification"

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes

    def loss(self, output: Tensor, x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        self._check_shapes(output, y)
        return F.cross_entropy(at_least_float32(output), y, reduction=reduction)

    def error(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        self._check_shapes(output, y)
        return output.detach().argmax(dim=1).ne(y).float().mean()

    def _check_shapes(self, output: Tensor, y: Tensor) -> None:
        """Logits (B, num_classes) and labels (B,): other shapes would broadcast into a wrong number."""
        if output.dim() != 2 or output.shape[1] != self.num_classes or y.shape != output.shape[:1]:
            raise ValueError(f"classification needs logits (B, {self.num_classes}) and labels (B,), got "
                             f"{tuple(output.shape)} and {tuple(y.shape)}")

    def output_activity(self, output: Tensor) -> Tensor:
        return at_least_float32(output).softmax(dim=1).to(output.dtype)

    def best_output(self, x: Tensor, y: Tensor) -> Tensor:
        return F.one_hot(y, self.num_classes).to(x.dtype)


class Reconstruction(Task):
    """Squared L2 reconstruction error ‖x̂ − x‖² of the flattened input, summed over
    features (seed 003 §5.5); error = the mean squared error per feature. The output is
    linear, its activity the reconstruction itself, its optimum the input."""

    name = "reconstruction"
    error_name = "mean squared error"

    def loss(self, output: Tensor, x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        squared = (at_least_float32(output) - at_least_float32(self._target(output, x))).square().sum(dim=1)
        return squared.sum() if reduction == "sum" else squared.mean()

    def error(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return (at_least_float32(output.detach()) - at_least_float32(self._target(output, x))).square().mean()

    @staticmethod
    def _target(output: Tensor, x: Tensor) -> Tensor:
        """The flattened input, which ``output`` must match in shape (no broadcasting)."""
        target = x.flatten(1)
        if output.shape != target.shape:
            raise ValueError(f"a reconstruction (B, D) must match the flattened input, got {tuple(output.shape)} "
                             f"for {tuple(target.shape)}")
        return target

    def output_activity(self, output: Tensor) -> Tensor:
        return output

    def best_output(self, x: Tensor, y: Tensor) -> Tensor:
        return x.flatten(1)
