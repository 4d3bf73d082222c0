"""The single-layer sub-networks that give each hidden block its local loss
(seed 004 §3, Figure 1)."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from locallearn.nn.feedback import LinearFeedbackAlignment


def pooled_size(feature_shape: tuple[int, ...], dim_in_decoder: int) -> tuple[int, int]:
    """Spatial size after the pred head's average pooling: the kernel's height and
    width are doubled in turn (as in the paper's code) until C·h·w ≤ dim_in_decoder
    or the kernel covers the whole map. Raises ValueError for a shape that is not
    three positive sizes (C, H, W) or a dim_in_decoder below 1."""
    if len(feature_shape) != 3 or not all(_is_positive_int(size) for size in feature_shape):
        raise ValueError(f"feature_shape must be three positive ints (C, H, W), got {tuple(feature_shape)}")
    if not _is_positive_int(dim_in_decoder):
        raise ValueError(f"dim_in_decoder must be a positive int, got {dim_in_decoder!r}")
    channels, height, width = feature_shape
    kernel_h = kernel_w = 1
    out_h, out_w = height, width
    while channels * out_h * out_w > dim_in_decoder and kernel_h < height:
        kernel_h *= 2
        out_h = math.ceil(height / kernel_h)
        if channels * out_h * out_w > dim_in_decoder and kernel_w < width:
            kernel_w *= 2
            out_w = math.ceil(width / kernel_w)
    while channels * out_h * out_w > dim_in_decoder and kernel_w < width:
        kernel_w *= 2
        out_w = math.ceil(width / kernel_w)
    return out_h, out_w


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_feature_shape(feature_shape: tuple[int, ...]) -> None:
    """ValueError unless ``feature_shape`` is a block's (features,) or (C, H, W)."""
    if len(feature_shape) not in (1, 3) or not all(_is_positive_int(size) for size in feature_shape):
        raise ValueError(f"feature_shape must be a block's output shape without the batch, (features,) or "
                         f"(C, H, W) of positive ints, got {tuple(feature_shape)}")


class AveragePool(nn.Module):
    """Average pooling of (B, C, H, W) maps to a fixed spatial size."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, h: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(h, self.size)


class PredictionHead(nn.Module):
    """The pred loss's local classifier W of seed 004 eq. (6): for conv features,
    average pooling to about ``dim_in_decoder`` values, then flatten and a linear
    layer. With ``feedback_alignment`` (pred-bio, §3.3) the error reaches the block
    through a fixed random matrix instead of Wᵀ.

    W starts at zero, as in the authors' code (anokland/local-loss, train.py at 7b3b40b,
    l. 499 and 706: ``decoder_y.weight.data.zero_()``), so a block's first update
    carries no pred error (Wᵀδ = 0). The bias keeps nn.Linear's initialisation there,
    except under feedback alignment, whose ``LinearFA`` zeroes it (l. 460)."""

    def __init__(self, feature_shape: tuple[int, ...], num_outputs: int, dim_in_decoder: int,
                 feedback_alignment: bool = False) -> None:
        super().__init__()
        _check_feature_shape(feature_shape)
        if not _is_positive_int(num_outputs):
            raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
        if len(feature_shape) == 3:
            if dim_in_decoder < feature_shape[0]:
                raise ValueError(f"dim_in_decoder={dim_in_decoder} is below the block's {feature_shape[0]} "
                                 "channels: average pooling cannot reduce the features that far")
            size = pooled_size(feature_shape, dim_in_decoder)
            self.pool: nn.Module = AveragePool(size)
            in_features = feature_shape[0] * size[0] * size[1]
        else:
            self.pool = nn.Identity()
            in_features = feature_shape[0]
        linear = LinearFeedbackAlignment if feedback_alignment else nn.Linear
        self.classifier = linear(in_features, num_outputs)
        nn.init.zeros_(self.classifier.weight)
        if feedback_alignment:
            nn.init.zeros_(self.classifier.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.classifier(self.pool(h).flatten(1))


class SimilarityHead(nn.Module):
    """NeuralNet(·) of seed 004 eq. (4): a 3×3 convolution (conv features; the
    similarity op then takes each channel's standard deviation over space) or a
    linear layer. ``learned=False`` is sim-bio (§3.3): average pooling to about
    ``dim_in_decoder`` values (conv) or nothing (linear), so no backward pass
    through a head is needed. Unlike the pred head, the learned transform keeps
    PyTorch's initialisation, as in the authors' code (train.py l. 503 and 710)."""

    def __init__(self, feature_shape: tuple[int, ...], learned: bool = True, dim_in_decoder: int = 2048) -> None:
        super().__init__()
        _check_feature_shape(feature_shape)
        conv = len(feature_shape) == 3
        if learned:
            channels = feature_shape[0]
            self.transform: nn.Module = (nn.Conv2d(channels, channels, 3, padding=1, bias=False) if conv
                                         else nn.Linear(channels, channels, bias=False))
        elif conv:
            if dim_in_decoder < feature_shape[0]:
                raise ValueError(f"dim_in_decoder={dim_in_decoder} is below the block's {feature_shape[0]} "
                                 "channels: average pooling cannot reduce the features that far")
            self.transform = AveragePool(pooled_size(feature_shape, dim_in_decoder))
        else:
            self.transform = nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        return self.transform(h)
