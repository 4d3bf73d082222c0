"""Architectures against seed 004 §4 (VGG8B, VGG11B, the MLPs and their parameter
counts in Tables 1, 2, 4 and 5) and seed 000 Table I (AllCNN-C and its short variant)."""

import pytest
import torch
from helpers import meta_model, parameter_count
from torch import nn
from torch.nn import functional as F

from locallearn.models import ACTIVATIONS, MODEL_NAMES, BlockSpec, HiddenBlock, build_model, initialize
from locallearn.models.tasks import Classification, Reconstruction

# Seed 004 §4, verbatim.
PAPER_LAYOUT = {
    "vgg8b": "conv128-conv256-pool-conv256-conv512-pool-conv512-pool-conv512-pool-fc1024-fc",
    "vgg11b": "conv128-conv128-conv128-conv256-pool-conv256-conv512-pool-conv512-conv512-pool-conv512-pool-fc1024-fc",
}

# Seed 000 Table I: (kernel, filters, stride) of every convolution, the last one the output.
ALLCNN_TABLE_I = {
    "allcnn-c": [(3, 96, 1), (3, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 1), (3, 192, 2), (3, 192, 1),
                 (1, 192, 1), (1, 10, 1)],
    "allcnn-c-short": [(5, 32, 2), (5, 64, 2), (8, 64, 2), (1, 10, 1)],
}


def paper_vgg_parameter_count(layout: str, input_shape, num_classes: int, multiplier: int = 1) -> int:
    """Closed form from the layout string: 3×3 convs without bias (batch norm follows,
    with a weight and a bias per channel), fc1024 likewise, the output linear with bias."""
    channels, height, width = input_shape
    total = 0
    for token in layout.split("-"):
        if token == "pool":
            height, width = height // 2, width // 2
        elif token.startswith("conv"):
            out = int(token[4:]) * multiplier
            total += 9 * channels * out + 2 * out
            channels = out
        elif token == "fc1024":
            total += channels * height * width * 1024 + 2 * 1024
            channels, height, width = 1024, 1, 1
        else:
            assert token == "fc"
            total += channels * num_classes + num_classes
    return total


def mlp_parameter_count(inputs: int, depth: int, width: int, num_classes: int) -> int:
    sizes = [inputs] + [width] * depth
    hidden = sum(a * b + 2 * b for a, b in zip(sizes, sizes[1:]))
    return hidden + width * num_classes + num_classes


def two_significant(n: int) -> float:
    """How the paper's tables print parameter counts (7.3M, 12M, 91M)."""
    return float(f"{n:.2g}")


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "name, input_shape, multiplier, paper",
    [
        ("vgg8b", (1, 28, 28), 1, 7.3e6),  # Table 1, 3
        ("vgg8b", (1, 28, 28), 2, 28e6),  # Table 2, VGG8B(2x)
        ("vgg8b", (3, 32, 32), 1, 8.9e6),  # Table 4, 5
        ("vgg8b", (3, 32, 32), 2, 31e6),  # Table 5, VGG8B(2x)
        ("vgg11b", (3, 32, 32), 1, 12e6),  # Table 4
        ("vgg11b", (3, 32, 32), 2, 42e6),  # Table 4, VGG11B(2x)
        ("vgg11b", (3, 32, 32), 3, 91e6),  # Table 4, VGG11B(3x)
    ],
)
def test_vgg_parameter_count_matches_paper(name, input_shape, multiplier, paper):
    model = meta_model(name, input_shape, 10, width_multiplier=multiplier)
    count = parameter_count(model)
    assert count == paper_vgg_parameter_count(PAPER_LAYOUT[name], input_shape, 10, multiplier)
    assert two_significant(count) == paper


def test_vgg8b_mnist_exact_parameter_count():
    # 7,325,066: rounds to Table 1's 7.3M.
    assert parameter_count(meta_model("vgg8b", (1, 28, 28), 10)) == 7_325_066


@pytest.mark.parametrize(
    "input_shape, width, paper",
    [((1, 28, 28), 1024, 2.9e6), ((3, 32, 32), 3000, 27e6)],  # Table 1 (2,916,362), Table 4
)
def test_mlp_parameter_count_matches_paper(input_shape, width, paper):
    count = parameter_count(meta_model("mlp", input_shape, 10, depth=3, width=width))
    inputs = input_shape[0] * input_shape[1] * input_shape[2]
    assert count == mlp_parameter_count(inputs, 3, width, 10)
    assert two_significant(count) == paper


def test_batch_norm_replaces_bias():
    with_bn = build_model("vgg8b", (3, 16, 16), 10, width_multiplier=0.125)
    without = build_model("vgg8b", (3, 16, 16), 10, width_multiplier=0.125, batch_norm=False)
    for block in with_bn.blocks:
        assert block.layer.bias is None and isinstance(block.norm, (nn.BatchNorm1d, nn.BatchNorm2d))
    for block in without.blocks:
        assert block.layer.bias is not None and isinstance(block.norm, nn.Identity)
    widths = sum(block.layer.weight.shape[0] for block in with_bn.blocks)
    # BN adds a weight and a bias per channel; no-BN adds only the layer bias.
    assert parameter_count(with_bn) - parameter_count(without) == widths


# ---------------------------------------------------------------- layouts


def paper_vgg_blocks(layout: str, multiplier: int = 1):
    """(width, max-pooled) of every conv block in a seed 004 layout string."""
    blocks = []
    for token in layout.split("-"):
        if token == "pool":
            blocks[-1] = (blocks[-1][0], True)
        elif token.startswith("conv"):
            blocks.append((int(token[4:]) * multiplier, False))
    return blocks


@pytest.mark.parametrize("name", ["vgg8b", "vgg11b"])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_vgg_layout_is_paper(name, multiplier):
    model = meta_model(name, (3, 32, 32), 7, width_multiplier=multiplier)
    expected = paper_vgg_blocks(PAPER_LAYOUT[name], multiplier)
    *conv_blocks, fc = model.blocks
    assert len(conv_blocks) == len(expected) == (6 if name == "vgg8b" else 9)
    for block, (width, pooled) in zip(conv_blocks, expected):
        conv = block.layer
        assert isinstance(conv, nn.Conv2d)
        assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (width, (3, 3), (1, 1), (1, 1))
        assert isinstance(block.pool, nn.MaxPool2d) if pooled else isinstance(block.pool, nn.Identity)
        if pooled:
            assert block.pool.kernel_size == 2 and block.pool.stride == 2
    # fc1024 is not scaled by the width multiplier ("convolutional filters were multiplied").
    assert isinstance(fc.layer, nn.Linear) and fc.layer.out_features == 1024
    assert isinstance(model.output.layer, nn.Linear) and model.output.layer.out_features == 7
    # 4 pools of 32 → 2; last conv width × 2 × 2 feeds fc1024.
    assert fc.layer.in_features == expected[-1][0] * 2 * 2


def test_width_multiplier_doubles_every_conv_width():
    for name in ("vgg8b", "vgg11b", "allcnn-c", "allcnn-c-short"):
        one = meta_model(name, (3, 32, 32), 10)
        two = meta_model(name, (3, 32, 32), 10, width_multiplier=2)
        for a, b in zip(one.blocks, two.blocks):
            if isinstance(a.layer, nn.Conv2d):
                assert b.layer.out_channels == 2 * a.layer.out_channels


@pytest.mark.parametrize("name", ["allcnn-c", "allcnn-c-short"])
def test_allcnn_layout_is_table_i(name):
    model = build_model(name, (3, 32, 32), 10)
    convs = [block.layer for block in model.blocks] + [model.output.layer]
    assert all(isinstance(conv, nn.Conv2d) for conv in convs)
    # Only convolutions, nine of them (four in the short variant), no pooling inside.
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == len(ALLCNN_TABLE_I[name])
    assert not any(isinstance(m, (nn.Linear, nn.MaxPool2d)) for m in model.modules())
    assert len(model.blocks) == len(ALLCNN_TABLE_I[name]) - 1
    for conv, (kernel, filters, stride) in zip(convs, ALLCNN_TABLE_I[name]):
        assert (conv.kernel_size, conv.out_channels, conv.stride) == ((kernel, kernel), filters, (stride, stride))


def test_allcnn_output_is_one_by_one_conv_then_global_average():
    torch.manual_seed(0)
    model = build_model("allcnn-c-short", (3, 20, 20), 10).eval()
    x = torch.randn(3, 3, 20, 20)
    with torch.no_grad():
        h = x
        for block in model.blocks:
            h = block(h)
        conv = model.output.layer
        expected = (torch.einsum("bchw,kc->bkhw", h, conv.weight[:, :, 0, 0]) + conv.bias[:, None, None]).mean((2, 3))
        torch.testing.assert_close(model(x), expected)
    assert h.shape[2:] != (1, 1)  # the averaging is really over several positions


def test_block_is_layer_batchnorm_activation_dropout_pool():
    """features = act(BN(layer(x))), emit = pool(dropout(h)) (seed 004 §4)."""
    torch.manual_seed(0)
    model = build_model("vgg8b", (3, 16, 16), 10, width_multiplier=0.125, activation="leaky_relu", dropout=0.3)
    block = model.blocks[1]  # a pooled block
    with torch.no_grad():
        block.norm.running_mean.normal_()
        block.norm.running_var.uniform_(0.5, 2.0)
        block.norm.weight.normal_()
        block.norm.bias.normal_()
    model.eval()
    x = torch.randn(4, *model.blocks[1].layer.weight.shape[1:2], 16, 16)
    with torch.no_grad():
        z = F.conv2d(x, block.layer.weight, padding=1)
        norm = block.norm
        z = (z - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        z = z * norm.weight[:, None, None] + norm.bias[:, None, None]
        expected = F.leaky_relu(z, 0.01)
        torch.testing.assert_close(block.features(x), expected)
        torch.testing.assert_close(block(x), F.max_pool2d(expected, 2))
    # Train mode: dropout drops about 30% of the features before pooling.
    block.train()
    h = torch.rand(64, block.layer.out_channels, 8, 8) + 1
    dropped = (block.dropout(h) == 0).float().mean().item()
    assert 0.25 < dropped < 0.35


def test_vgg_conv_blocks_drop_whole_channels():
    """Seed 004 §4 puts dropout after every nonlinearity; the authors' code (anokland/local-loss
    train.py at 7b3b40b) drops whole channels in conv blocks (l. 723, nn.Dropout2d) and single
    values in linear blocks (l. 513, nn.Dropout): every feature map of a VGG conv block is kept
    whole (scaled by 1/(1 − p)) or all zero, while the fc1024 block and the MLP drop values."""
    torch.manual_seed(0)
    p = 0.3
    model = build_model("vgg11b", (3, 16, 16), 10, width_multiplier=0.125, dropout=p).train()
    for index, block in enumerate(model.blocks[:-1]):
        h = torch.rand(32, block.layer.out_channels, 4, 4) + 1
        maps, expected = block.dropout(h).flatten(2), (h / (1 - p)).flatten(2)
        dropped = (maps == 0).all(-1)
        kept = torch.isclose(maps, expected).all(-1)
        assert (dropped | kept).all(), f"block {index} dropped part of a feature map"
        assert 0.2 < dropped.float().mean() < 0.4, f"block {index}"
    mlp_block = build_model("mlp", (1, 8, 8), 10, width=256, dropout=p).train().blocks[0]
    for block in (model.blocks[-1], mlp_block):
        h = torch.rand(64, block.layer.out_features) + 1
        dropped = block.dropout(h) == 0
        assert 0.25 < dropped.float().mean() < 0.35
        assert dropped.any(1).all() and not dropped.all(1).any()  # values, not whole examples


def test_channel_dropout_needs_feature_maps():
    with pytest.raises(ValueError, match="feature maps"):
        HiddenBlock((16,), BlockSpec(8, kind="linear", channel_dropout=True), "relu", 0.1, True)


# ---------------------------------------------------------------- shapes


SHAPE_CASES = [
    ("vgg8b", (3, 32, 32)),
    ("vgg8b", (3, 37, 29)),
    ("vgg8b", (1, 16, 17)),
    ("vgg11b", (3, 37, 29)),
    ("vgg11b", (2, 19, 23)),
    ("allcnn-c", (3, 37, 29)),
    ("allcnn-c", (1, 8, 8)),
    ("allcnn-c-short", (1, 8, 8)),
    ("allcnn-c-short", (3, 37, 29)),
    ("allcnn-c-short", (2, 5, 5)),
    ("allcnn-c-short", (3, 9, 14)),
    ("mlp", (1, 8, 8)),
    ("mlp", (3, 7, 5)),
    ("cnn-seed001", (1, 8, 8)),
    ("cnn-seed001", (3, 37, 29)),
    ("cnn-seed001", (2, 5, 5)),
    # Seed 003 Table 3: the locally-connected networks and their MLPs.
    *((name, shape) for name in ("lc-mnist", "lc-cifar", "lc-imagenet", "fc-mnist", "fc-cifar")
      for shape in ((1, 8, 8), (3, 17, 12), (2, 5, 5))),
    # He et al. 2016 §4.2: the CIFAR ResNets (tests/test_resnet.py has their layout and counts).
    # Odd sizes: a ResNet's strided conv and its subsampled shortcut both give ⌈size / 2⌉.
    *((name, shape) for name in ("resnet20", "resnet32") for shape in ((3, 32, 32), (3, 37, 29), (2, 5, 5))),
    ("resnet20", (1, 28, 28)),
    ("resnet20", (1, 1, 1)),
]


@pytest.mark.parametrize("name, input_shape", SHAPE_CASES)
def test_block_shapes_match_forward(name, input_shape):
    """Any input shape, 7 classes, tanh and dropout (inactive in eval): the block shapes
    are what a forward gives."""
    torch.manual_seed(0)
    model = build_model(name, input_shape, 7, width_multiplier=0.25, width=32, activation="tanh", dropout=0.1).eval()
    assert len(model.block_shapes) == len(model.blocks)
    h = torch.randn(2, *input_shape)
    with torch.no_grad():
        for block, shape in zip(model.blocks, model.block_shapes):
            features = block.features(h)
            assert tuple(features.shape) == (2, *shape)
            h = block.emit(features)
        assert model.output(h).shape == (2, 7)


@pytest.mark.parametrize("name", [name for name in MODEL_NAMES if name != "autoencoder"])  # it has no classes
@pytest.mark.parametrize("num_classes", [2, 3, 100])
def test_logits_shape_for_any_class_count(name, num_classes):
    torch.manual_seed(0)
    model = build_model(name, (3, 16, 16), num_classes, width_multiplier=0.125, width=16)
    assert model(torch.randn(5, 3, 16, 16)).shape == (5, num_classes)


def test_seed001_cnn_layout_and_parameter_counts():
    """Seed 001's CNN as its authors built it: 4 × conv 3×3×32, 4 × conv 3×3×64 ('same'
    padding; the 4th and 8th with stride 2), which leave 64×7×7 on 1×28×28; under AL these are
    all the forward functions. The backprop baseline is §3.1's 14-layer CNN: the same
    convolutions, fc1280, 4 × fc256, fc10."""
    model = meta_model("cnn-seed001", (1, 28, 28), 10, batch_norm=False, width_multiplier=2)  # fixed widths
    assert [(b.layer.out_channels, b.layer.kernel_size, b.layer.stride, b.layer.padding) for b in model.blocks] == [
        (c, (3, 3), (s, s), (1, 1)) for c, s in [(32, 1)] * 3 + [(32, 2)] + [(64, 1)] * 3 + [(64, 2)]]
    assert all(isinstance(b.pool, nn.Identity) for b in model.blocks)
    assert model.block_shapes[3] == (32, 14, 14) and model.block_shapes[7] == (64, 7, 7)
    conv_count = 9 * 32 + 32 + 3 * (9 * 32 * 32 + 32) + 9 * 32 * 64 + 64 + 3 * (9 * 64 * 64 + 64)
    assert parameter_count(model) == conv_count + 3136 * 10 + 10
    matched = meta_model("cnn-seed001-matched", (1, 28, 28), 10, batch_norm=False)
    convs, fcs = matched.blocks[:8], matched.blocks[8:]
    assert [b.layer.out_channels for b in convs] == [b.layer.out_channels for b in model.blocks]
    assert [b.layer.out_features for b in fcs] == [1280, 256, 256, 256, 256]
    assert fcs[0].layer.in_features == 3136 and matched.output.layer.out_features == 10
    assert len(matched.blocks) + 1 == 14
    sizes = [3136, 1280, 256, 256, 256, 256, 10]
    assert parameter_count(matched) == conv_count + sum(a * b + b for a, b in zip(sizes, sizes[1:])) == 4_700_586


def test_seed001_mlp_layout_and_parameter_counts():
    """Seed 001's MLP as its authors built it for AL: two layers of 1024 (the forward
    functions); its backprop baseline §3.1's 1024-1024-5120-1024-1024-10."""
    model = meta_model("mlp-seed001", (1, 28, 28), 10, batch_norm=False, depth=7, width=5)  # fixed widths
    assert [b.layer.out_features for b in model.blocks] == [1024, 1024]
    matched = meta_model("mlp-seed001-matched", (1, 28, 28), 10, batch_norm=False)
    assert [b.layer.out_features for b in matched.blocks] == [1024, 1024, 5120, 1024, 1024]
    sizes = [784, 1024, 1024, 5120, 1024, 1024, 10]
    assert parameter_count(matched) == sum(a * b + b for a, b in zip(sizes, sizes[1:])) == 13_405_194


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["vgg8b", "vgg11b"])
def test_digits_too_small_for_vgg(name):
    # Four 2×2 poolings of 8×8 leave an empty map.
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*too small"):
        build_model(name, (1, 8, 8), 10)


def test_too_small_for_allcnn_short():
    with pytest.raises(ValueError, match=r"\(1, 2, 2\)"):
        build_model("allcnn-c-short", (1, 2, 2), 10)


def test_vgg_smallest_legal_input():
    """16×16 survives four poolings (1×1 left); 15×15 does not."""
    build_model("vgg8b", (1, 16, 16), 10, width_multiplier=0.125)
    with pytest.raises(ValueError, match="too small"):
        build_model("vgg8b", (1, 15, 16), 10, width_multiplier=0.125)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="resnet") as info:
        build_model("resnet", (3, 32, 32), 10)
    assert all(name in str(info.value) for name in MODEL_NAMES)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="gelu") as info:
        build_model("mlp", (1, 8, 8), 10, activation="gelu")
    assert all(name in str(info.value) for name in ACTIVATIONS)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_bad_dropout(dropout):
    with pytest.raises(ValueError, match="dropout"):
        build_model("mlp", (1, 8, 8), 10, dropout=dropout)


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("mlp", {"num_classes": 1}, "num_classes"),
        ("mlp", {"depth": 0}, "depth"),
        ("mlp", {"width": 0}, "width"),
        ("vgg8b", {"width_multiplier": 0}, "width_multiplier"),
        ("allcnn-c", {"width_multiplier": -1}, "width_multiplier"),
        ("vgg8b", {"input_shape": (784,)}, "conv"),
    ],
)
def test_bad_arguments(name, kwargs, word):
    args = {"input_shape": (3, 32, 32), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=word):
        build_model(name, args.pop("input_shape"), args.pop("num_classes"), **args)


# ---------------------------------------------------------------- initialisation


def test_init_schemes_follow_their_definitions():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 16, 16), 10, depth=2, width=256, batch_norm=False)
    initialize(model, "orthogonal")
    weight = model.blocks[1].layer.weight.detach().double()
    assert torch.allclose(weight @ weight.T, torch.eye(256, dtype=torch.float64), atol=1e-5)
    initialize(model, "gaussian", std=0.2236)
    weights = torch.cat([module.weight.flatten() for module in model.modules() if isinstance(module, nn.Linear)])
    assert abs(weights.std().item() - 0.2236) < 0.005 and abs(weights.mean().item()) < 0.005
    assert all(torch.all(module.bias == 0) for module in model.modules() if isinstance(module, nn.Linear))
    initialize(model, "glorot")
    first = model.blocks[0].layer.weight
    bound = (6 / (first.shape[0] + first.shape[1])) ** 0.5
    assert first.abs().max() <= bound and first.abs().max() > 0.95 * bound


def test_init_schemes_reach_locally_connected_layers():
    """Every location's kernel is drawn by the scheme: orthogonal per location, Gaussian
    entries, or the layer's own Glorot bound; biases zero."""
    torch.manual_seed(0)
    model = build_model("lc-mnist", (1, 12, 12), 10, batch_norm=False)
    layer = model.blocks[1].layer  # weight (9, 64, 32·3·3): 64 rows of 288 per location
    with torch.no_grad():
        layer.bias.fill_(1.0)
    initialize(model, "orthogonal")
    for kernel in layer.weight.detach().double():
        assert torch.allclose(kernel @ kernel.T, torch.eye(64, dtype=torch.float64), atol=1e-5)
    assert torch.all(layer.bias == 0)
    initialize(model, "gaussian", std=0.3)
    assert abs(layer.weight.std().item() - 0.3) < 0.01
    initialize(model, "glorot")
    assert 0.95 * layer.glorot_bound < layer.weight.abs().max() <= layer.glorot_bound


def test_he_init_has_the_fan_in_variance():
    """He normal (seed 001 §3): std √(2 / fan_in), zero biases; per kernel for LC layers."""
    torch.manual_seed(0)
    model = build_model("mlp", (1, 20, 20), 10, depth=1, width=300, batch_norm=False)
    lc = build_model("lc-mnist", (1, 12, 12), 10, batch_norm=False).blocks[1].layer
    initialize(model, "he")
    initialize(lc, "he")
    for weight, fan_in in ((model.blocks[0].layer.weight, 400), (lc.weight, 32 * 9)):
        assert weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert torch.count_nonzero(model.blocks[0].layer.bias) == 0


def test_unknown_init_scheme_lists_the_valid_ones():
    model = build_model("mlp", (1, 8, 8), 10, depth=1, width=8)
    with pytest.raises(ValueError, match="orthogonal"):
        initialize(model, "kaiming")


@pytest.mark.parametrize("changes, message", [
    ({"stride": 0}, "stride must be an int >= 1, got 0"),  # was a ZeroDivisionError while building
    ({"kernel_size": 0}, "kernel_size must be an int >= 1, got 0"),  # was accepted: a 0 × 0 kernel, padding -1
    ({"width": 4.5}, "width must be an int >= 1, got 4.5"),
    ({"stride": True}, "stride must be an int >= 1, got True"),
])
def test_block_specs_refuse_bad_sizes(changes, message):
    with pytest.raises(ValueError, match=message):
        BlockSpec(**{"width": 4, **changes})


def test_tasks_refuse_shapes_that_would_broadcast():
    """Labels (B, 1) against logits (B, K) broadcast to B × B comparisons, and a (B, 1)
    reconstruction against (B, D) inputs to B × D: both returned a number, silently."""
    logits = torch.randn(4, 10)
    classification = Classification(10)
    for labels in (torch.arange(4)[:, None], torch.arange(3)):
        with pytest.raises(ValueError, match=r"logits \(B, 10\) and labels \(B,\)"):
            classification.error(logits, None, labels)
        with pytest.raises(ValueError, match=r"logits \(B, 10\) and labels \(B,\)"):
            classification.loss(logits, None, labels)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        Classification(0)
    reconstruction, images = Reconstruction(), torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"must match the flattened input, got \(4, 1\) for \(4, 64\)"):
        reconstruction.loss(torch.randn(4, 1), images, None)
    with pytest.raises(ValueError, match=r"got \(1, 64\) for \(4, 64\)"):
        reconstruction.error(torch.randn(1, 64), images, None)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'none'"):
        reconstruction.loss(torch.randn(4, 64), images, None, reduction="none")
