"""Locally-connected layers and the networks of seed 003 Table 3 (§5.2, §5.4): the layer
against nn.Conv2d with tied weights, the transpose map against the adjoint identity
and §5.4's definition, parameter counts by hand, the ImageNet geometry, learning on
digits, the benchmark's CPU path and bad input."""

import json
import math

import pytest
import torch
from helpers import (digits_test_accuracy, load_benchmark, meta_model, parameter_count,
                     random_labels)
from torch import nn

from locallearn.models import MODEL_NAMES, BlockSpec, Network, build_model
from locallearn.nn import LocallyConnected2d, LocallyConnectedTranspose2d
from locallearn.rules import build_rule, default_activation

# (in_channels, out_channels, input_size, kernel_size, stride, padding, dilation)
GEOMETRIES = [
    (3, 5, (9, 7), 3, 2, 1, 1),
    (2, 4, (8, 8), (3, 2), (1, 2), (0, 1), 1),
    (4, 3, (11, 10), 3, 2, 2, 2),
    (1, 6, (5, 6), 5, 1, 2, 1),
    (3, 2, (7, 7), 1, 3, 0, 1),
]


def tied_to_conv(conv: nn.Conv2d, input_size) -> LocallyConnected2d:
    """An LC layer of conv's geometry whose kernel at every location is conv's."""
    layer = LocallyConnected2d(conv.in_channels, conv.out_channels, input_size, conv.kernel_size, conv.stride,
                               conv.padding, conv.dilation, bias=conv.bias is not None, dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.flatten(1).expand_as(layer.weight))
        if conv.bias is not None:
            layer.bias.copy_(conv.bias[:, None, None].expand_as(layer.bias))
    return layer


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_tied_weights_equal_conv2d(geometry, bias, generator):
    """Forward and input gradient equal nn.Conv2d's; the weight gradient summed over
    locations is the shared kernel's gradient."""
    in_channels, out_channels, input_size, kernel, stride, padding, dilation = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=bias).double()
    layer = tied_to_conv(conv, input_size)
    x = torch.randn(3, in_channels, *input_size, generator=generator, dtype=torch.float64)
    x_conv, x_lc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, actual = conv(x_conv), layer(x_lc)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected.backward(grad)
    actual.backward(grad)
    torch.testing.assert_close(x_lc.grad, x_conv.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad.sum(0), conv.weight.grad.flatten(1), rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(layer.bias.grad.sum((1, 2)), conv.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_transpose_with_the_layers_weight_is_its_adjoint(geometry, generator):
    """⟨LC(x), y⟩ = ⟨x, LCᵀ(y)⟩ in float64, and LCᵀ(y) = (dz/dx)ᵀ y, seed 003 §5.4's definition."""
    in_channels, out_channels, input_size, kernel, stride, padding, dilation = geometry
    torch.manual_seed(0)
    layer = LocallyConnected2d(in_channels, out_channels, input_size, kernel, stride, padding, dilation,
                               bias=False, dtype=torch.float64)
    transpose = LocallyConnectedTranspose2d.mirroring(layer, bias=False)
    assert transpose.weight.shape == layer.weight.shape
    assert (transpose.input_size, transpose.output_size) == (layer.output_size, layer.input_size)
    transpose.weight = layer.weight
    x = torch.randn(4, in_channels, *input_size, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, out_channels, *layer.output_size, generator=generator, dtype=torch.float64)
    z = layer(x)
    back = transpose(y)
    assert back.shape == x.shape
    torch.testing.assert_close((z * y).sum(), (x * back).sum(), rtol=1e-12, atol=0)
    (vjp,) = torch.autograd.grad(z, x, y)
    torch.testing.assert_close(back, vjp, rtol=1e-12, atol=1e-12)


def test_transpose_bias_has_the_input_shape(generator):
    """x = Vy + c with c of the transposed map's output shape (C_in, H, W)."""
    torch.manual_seed(0)
    transpose = LocallyConnectedTranspose2d(5, 3, (9, 7), 3, stride=2, padding=1, dtype=torch.float64)
    assert transpose.bias.shape == (3, 9, 7) and transpose.input_size == (5, 4)
    with torch.no_grad():
        transpose.bias.normal_(generator=generator)
    y = torch.randn(2, 5, 5, 4, generator=generator, dtype=torch.float64)
    without = LocallyConnectedTranspose2d(5, 3, (9, 7), 3, stride=2, padding=1, bias=False, dtype=torch.float64)
    without.weight = transpose.weight
    torch.testing.assert_close(transpose(y), without(y) + transpose.bias, rtol=0, atol=0)


def test_layer_and_transpose_gradients_pass_gradcheck(generator):
    """Autograd through the ops reaches the input, the weight and the bias of both modules."""
    torch.manual_seed(0)
    layer = LocallyConnected2d(2, 3, (5, 4), 3, stride=2, padding=1, dtype=torch.float64)
    transpose = LocallyConnectedTranspose2d.mirroring(layer)
    for module in (layer, transpose):
        with torch.no_grad():
            module.bias.normal_(generator=generator)
        x = torch.randn(2, module.in_channels, *module.input_size, generator=generator, dtype=torch.float64,
                        requires_grad=True)

        def output(x, weight, bias, module=module):
            return torch.func.functional_call(module, {"weight": weight, "bias": bias}, (x,))

        weight = module.weight.detach().clone().requires_grad_()
        bias = module.bias.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(output, (x, weight, bias))


@pytest.mark.parametrize("module_class", [LocallyConnected2d, LocallyConnectedTranspose2d])
def test_glorot_uniform_with_the_convolutions_fans(module_class):
    """Bound √(6/((C_in + C_out)·kh·kw)): fans C_in·kh·kw and C_out·kh·kw, not counting
    the separate kernels of the H_out·W_out locations; zero bias."""
    torch.manual_seed(0)
    module = module_class(24, 40, (16, 16), 3, padding=1)
    bound = math.sqrt(6 / ((24 + 40) * 9))
    weight = module.weight.detach()
    # (L, C_out, C_in·kh·kw) of the LC map; a transpose reads that map's C_out channels.
    lc_out, lc_in = (40, 24) if module_class is LocallyConnected2d else (24, 40)
    assert weight.shape == (256, lc_out, lc_in * 9)
    assert weight.abs().max() <= bound and weight.abs().max() > 0.999 * bound
    assert abs(weight.mean().item()) < 0.01 * bound
    assert weight.var().item() == pytest.approx(bound**2 / 3, rel=0.01)  # uniform on (−bound, bound)
    assert torch.all(module.bias == 0)


def test_extra_repr_states_the_geometry():
    layer = LocallyConnected2d(3, 8, (32, 30), 5, stride=2, padding=2, bias=False)
    assert repr(layer) == ("LocallyConnected2d(3, 8, input_size=(32, 30), output_size=(16, 15), kernel_size=(5, 5), "
                           "stride=(2, 2), padding=(2, 2), bias=False)")
    transpose = LocallyConnectedTranspose2d.mirroring(LocallyConnected2d(3, 8, 7, 3, dilation=2))
    assert repr(transpose) == ("LocallyConnectedTranspose2d(8, 3, input_size=(3, 3), output_size=(7, 7), "
                               "kernel_size=(3, 3), stride=(1, 1), dilation=(2, 2))")


# ---------------------------------------------------------------- Table 3 networks


def lc_layers(model):
    return [block.layer for block in model.blocks if block.kind == "locally_connected"]


# Seed 003 Table 3: (kernel, channels, stride) of every locally-connected layer.
TABLE3 = {
    "lc-mnist": [(3, 32, 2), (3, 64, 2)],
    "lc-cifar": [(5, 64, 2), (5, 128, 2), (3, 256, 1)],
    "lc-imagenet": [(9, 48, 4), (3, 48, 2), (5, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 2), (3, 384, 1)],
}


def test_lc_mnist_parameter_count_by_hand():
    """(1, 28, 28), no batch norm (seed 003's networks have biases, not batch norm).
    Padding (k − 1) // 2 = 1; output side ⌊(n + 2 − 3) / 2⌋ + 1.
      (3×3, 32, 2): 28 → 14, 196 locations · 32 · (1·9) weights + 32·14·14 biases = 56,448 + 6,272
      (3×3, 64, 2): 14 → 7,   49 locations · 64 · (32·9) weights + 64·7·7 biases  = 903,168 + 3,136
      FC 1024:      64·7·7 = 3,136 inputs · 1024 + 1024                            = 3,212,288
      softmax 10:   1024 · 10 + 10                                                 = 10,250
    """
    expected = (56_448 + 6_272) + (903_168 + 3_136) + 3_212_288 + 10_250
    assert expected == 4_191_562
    model = meta_model("lc-mnist", (1, 28, 28), 10, batch_norm=False)
    assert parameter_count(model) == expected
    assert model.block_shapes == [(32, 14, 14), (64, 7, 7), (1024,)]


def test_lc_cifar_parameter_count_by_hand():
    """(3, 32, 32), no batch norm.
      (5×5, 64, 2):  32 → 16 (pad 2), 256 locations · 64 · (3·25)   + 64·16·16  = 1,228,800 + 16,384
      (5×5, 128, 2): 16 → 8,           64 locations · 128 · (64·25) + 128·8·8   = 13,107,200 + 8,192
      (3×3, 256, 1):  8 → 8 (pad 1),   64 locations · 256 · (128·9) + 256·8·8   = 18,874,368 + 16,384
      FC 1024:       256·8·8 = 16,384 inputs · 1024 + 1024                      = 16,778,240
      softmax 10:    1024 · 10 + 10                                             = 10,250
    """
    expected = (1_228_800 + 16_384) + (13_107_200 + 8_192) + (18_874_368 + 16_384) + 16_778_240 + 10_250
    assert expected == 50_039_818
    model = meta_model("lc-cifar", (3, 32, 32), 10, batch_norm=False)
    assert parameter_count(model) == expected
    assert model.block_shapes == [(64, 16, 16), (128, 8, 8), (256, 8, 8), (1024,)]


def test_batch_norm_replaces_the_lc_bias_map():
    """With batch norm an LC layer loses its bias (C·H_out·W_out) and gains 2·C."""
    without = parameter_count(meta_model("lc-mnist", (1, 28, 28), 10, batch_norm=False))
    with_bn = parameter_count(meta_model("lc-mnist", (1, 28, 28), 10))
    # LC biases 6,272 + 3,136 → 2·32 + 2·64; FC bias 1,024 → 2·1,024.
    assert without - with_bn == (6_272 + 3_136 + 1_024) - (64 + 128 + 2_048)


@pytest.mark.parametrize(
    "name, input_shape, widths, expected",
    [
        # Each FC layer n_in·n_out weights + n_out biases; softmax 10 likewise.
        ("fc-mnist", (1, 28, 28), [256] * 5, (784 * 256 + 256) + 4 * (256 * 256 + 256) + (256 * 10 + 10)),
        ("fc-cifar", (3, 32, 32), [1024] * 3, (3072 * 1024 + 1024) + 2 * (1024 * 1024 + 1024) + (1024 * 10 + 10)),
    ],
)
def test_fc_networks_of_table3(name, input_shape, widths, expected):
    model = meta_model(name, input_shape, 10, batch_norm=False)
    assert [block.layer.out_features for block in model.blocks] == widths
    assert all(block.kind == "linear" for block in model.blocks)
    assert parameter_count(model) == expected  # 466,698 and 5,256,202


@pytest.mark.parametrize("name", list(TABLE3))
def test_lc_layers_are_table3(name):
    model = meta_model(name, (3, 32, 32), 10)
    layers = lc_layers(model)
    assert [(layer.kernel_size[0], layer.out_channels, layer.stride[0]) for layer in layers] == TABLE3[name]
    assert all(layer.padding == ((layer.kernel_size[0] - 1) // 2,) * 2 for layer in layers)
    assert not any(isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    hidden_fc = [block.layer.out_features for block in model.blocks if block.kind == "linear"]
    assert hidden_fc == ([] if name == "lc-imagenet" else [1024])


def conv_output_side(size: int, kernel: int, stride: int) -> int:
    padding = (kernel - 1) // 2
    return (size + 2 * padding - kernel) // stride + 1


def test_lc_imagenet_geometry_at_224():
    """Side by the output-size formula: 224 → 56 → 28 → 28 → 14 → 14 → 7 → 7; softmax 1000
    reads 384·7·7 = 18,816 features. 259,859,368 parameters without batch norm."""
    model = meta_model("lc-imagenet", (3, 224, 224), 1000, batch_norm=False)
    side, channels, count = 224, 3, 0
    for layer, (kernel, width, stride) in zip(lc_layers(model), TABLE3["lc-imagenet"], strict=True):
        assert (layer.in_channels, layer.input_size) == (channels, (side, side))
        side, channels = conv_output_side(side, kernel, stride), width
        assert layer.output_size == (side, side)
        assert layer.weight.shape == (side * side, width, layer.in_channels * kernel * kernel)
        count += layer.weight.numel() + layer.bias.numel()
    assert [side for _, side, _ in model.block_shapes] == [56, 28, 28, 14, 14, 7, 7]
    assert model.output.layer.in_features == 384 * 7 * 7
    count += 384 * 7 * 7 * 1000 + 1000
    assert parameter_count(model) == count == 259_859_368


def test_width_multiplier_scales_lc_channels_only():
    """§5.4 shrinks the channel counts; the FC 1024 layer keeps its width."""
    model = meta_model("lc-cifar", (3, 32, 32), 10, width_multiplier=0.25)
    assert [layer.out_channels for layer in lc_layers(model)] == [16, 32, 64]
    assert model.blocks[-1].layer.out_features == 1024
    assert model.name == "lc-cifar(0.25x)"


def test_model_names_are_registered():
    assert {"lc-mnist", "lc-cifar", "lc-imagenet", "fc-mnist", "fc-cifar"} <= set(MODEL_NAMES)


# ---------------------------------------------------------------- learning


def small_lc_network() -> Network:
    """Seed 003's LC layout at digits scale: LC (3×3, 8, /2), LC (3×3, 16, /2), FC 32, tanh,
    no batch norm. Narrow on purpose: random frozen layers of lc-mnist's width (with its
    FC 1024) already give 0.96 on digits, too close to what any rule reaches to tell
    learning from luck; these give at most 0.92."""
    specs = [BlockSpec(8, kind="locally_connected", kernel_size=3, stride=2),
             BlockSpec(16, kind="locally_connected", kernel_size=3, stride=2), BlockSpec(32, kind="linear")]
    return Network("small-lc", (1, 8, 8), 10, specs, activation="tanh", dropout=0.0, batch_norm=False)


def digits_accuracy(rule_name: str, lr: float, *, freeze_hidden: bool = False) -> float:
    """Test accuracy after DIGITS_STEPS batches of 128 (Adam), seed 0."""
    torch.manual_seed(0)
    model = small_lc_network()
    if freeze_hidden:
        model.blocks.requires_grad_(False)
    return digits_test_accuracy(build_rule(rule_name, model, lr=lr), DIGITS_STEPS, seed=0)


# Measured on CPU, 300 steps (seed 0; seeds 1, 2 in brackets): backprop 0.974, fa 0.961
# [0.954, 0.943], dtp 0.969 [0.961, 0.957], sdtp 0.969 [0.956, 0.959], ao-sdtp 0.970 (at
# 1e-2; [0.957, 0.961]), dtp-sigma 0.969 [0.959, 0.959], predsim 0.948 [0.952, 0.946].
# Frozen random hidden layers with a trained output layer: at best 0.920 [0.906, 0.917]
# over rates 3e-3 … 0.1.
DIGITS_STEPS = 300
DIGITS_LR = {"backprop": 3e-3, "predsim": 3e-3, "fa": 3e-3, "dtp": 3e-3, "sdtp": 3e-3, "ao-sdtp": 1e-2,
             "dtp-sigma": 3e-3}
DIGITS_BARS = {"backprop": 0.96, "predsim": 0.935, "fa": 0.945, "dtp": 0.955, "sdtp": 0.955, "ao-sdtp": 0.955,
               "dtp-sigma": 0.955}


@pytest.fixture(scope="module")
def frozen_accuracy() -> float:
    return max(digits_accuracy("backprop", lr, freeze_hidden=True) for lr in (3e-3, 3e-2, 1e-1))


@pytest.mark.parametrize("rule_name", list(DIGITS_BARS))
def test_locally_connected_network_learns_digits(rule_name, frozen_accuracy):
    """Backprop, predsim, FA and the DTP family (LC inverses, seed 003 §5.4) all train LC layers."""
    assert 0.1 < frozen_accuracy < min(DIGITS_BARS.values()) - 0.01  # the bars mean the hidden layers learned
    accuracy = digits_accuracy(rule_name, DIGITS_LR[rule_name])
    assert accuracy >= DIGITS_BARS[rule_name], f"{rule_name}: {accuracy:.3f}"


@pytest.mark.parametrize("rule_name", ["pred", "sim", "dfa"])
def test_block_rules_train_lc_blocks(rule_name):
    """The local and direct-feedback rules read features()/emit() of LC blocks like any other:
    every LC layer moves, and 30 steps on one fixed batch bring the rule's loss to 5 % of its
    first value or below (measured: pred 0.001, sim 0.002, dfa 0.004)."""
    torch.manual_seed(0)
    model = build_model("lc-mnist", (1, 8, 8), 10, activation=default_activation(rule_name))
    rule = build_rule(rule_name, model, lr=1e-3)
    before = [layer.weight.detach().clone() for layer in lc_layers(model)]
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=generator), random_labels(16, 10, generator)
    losses = [float(rule.train_step(x, y)["loss"]) for _ in range(30)]
    assert all(not torch.equal(a, layer.weight) for a, layer in zip(before, lc_layers(model)))
    assert losses[-1] <= 0.05 * losses[0], losses


# ---------------------------------------------------------------- benchmark


def test_benchmark_cpu_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark = load_benchmark("bench_locally_connected")
    benchmark.main(["--device", "cpu", "--quick", "--cases", "cifar1", "--no-compile", "--json", str(out)])
    result = json.loads(out.read_text())
    assert {(row["case"], row["mode"]) for row in result["rows"]} == {("cifar1", "forward+backward"),
                                                                      ("cifar1", "transpose")}
    for row in result["rows"]:
        assert set(row["ms"]) == {"fused", "eager"} and all(ms > 0 for ms in row["ms"].values())
        assert row["rel_diff_vs_eager"] < 1e-5
        assert row["tflops"]["fused"] == pytest.approx(row["model_tflop"] / (row["ms"]["fused"] * 1e-3))
        assert row["gbps"]["fused"] == pytest.approx(row["model_gb"] / (row["ms"]["fused"] * 1e-3))
    assert result["roofline_tflops"]["float32"] > 0 and result["roofline_gbps"] > 0
    assert result["native"] == {"ran": True, "ops": ["locally_connected2d", "locally_connected2d_transpose",
                                                     "locally_connected2d_weight_grad"],
                                "device": "cpu", "reason": None}
    train = result["training_step"]
    assert train["model"] == "lc-imagenet" and train["ms"] > 0 and train["parameters"] > 0
    assert "x eager" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "shape, word",
    [((2, 4, 9, 7), r"\(B, 3, 9, 7\).*\(2, 4, 9, 7\)"), ((2, 3, 9, 8), r"\(2, 3, 9, 8\)"),
     ((3, 9, 7), r"\(3, 9, 7\)")],
)
def test_layer_rejects_input_of_the_wrong_shape(shape, word):
    layer = LocallyConnected2d(3, 5, (9, 7), 3, stride=2, padding=1)
    with pytest.raises(ValueError, match=word):
        layer(torch.randn(shape))
    transpose = LocallyConnectedTranspose2d.mirroring(layer)
    with pytest.raises(ValueError, match=r"\(B, 5, 5, 4\)"):
        transpose(torch.randn(2, 5, 9, 7))
    with pytest.raises(ValueError, match="list"):
        layer([1.0])


@pytest.mark.parametrize(
    "args, word",
    [
        ((0, 4, (8, 8), 3), "channel"),
        ((3, 4, (8, 0), 3), "input_size"),
        ((3, 4, (8, 8), 0), "kernel_size"),
        ((3, 4, (8, 8), (3, 3, 3)), "kernel_size"),
        ((3, 4, (8, 8), 2.5), "kernel_size"),
        ((3, 4, (8, 8), 3, True), "stride"),
        ((3, 4, (8, 8), 3, 0), "stride"),
        ((3, 4, (8, 8), 3, 1, -1), "padding"),
        ((3, 4, (8, 8), 3, 1, 0, 0), "dilation"),
        ((3, 4, (4, 8), 5), "spans 5 along the height, more than the input's 4"),
    ],
)
def test_bad_layer_arguments(args, word):
    with pytest.raises(ValueError, match=word):
        LocallyConnected2d(*args)


def test_lc_network_needs_image_input():
    with pytest.raises(ValueError, match=r"locally_connected block needs \(C, H, W\)"):
        build_model("lc-mnist", (784,), 10)
    build_model("fc-mnist", (784,), 10)  # an MLP takes flat input


def test_network_rejects_a_mis_sized_image():
    model = build_model("lc-mnist", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        model(torch.randn(2, 1, 28, 28))
