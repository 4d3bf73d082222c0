"""Learning rules and their layers against closed forms and seed 004 (Nøkland & Eidnes
2019, §3–§4): feedback alignment, the pred head's pooling, the local losses pred / sim /
predsim and their -bio variants, the absence of any error crossing a block boundary,
checkpoints, and accuracy on real data (scikit-learn's digits)."""

import copy

import pytest
import torch
from helpers import digits_test_accuracy, normalised_digits, random_labels, relative_error
from torch import nn
from torch.nn import functional as F

from locallearn.models import build_model
from locallearn.nn import LinearFeedbackAlignment, PredictionHead, SimilarityHead, pooled_size
from locallearn.ops import reference
from locallearn.rules import RULE_NAMES, build_rule, default_activation
from locallearn.rules.local_losses import LOCAL_LOSS_NAMES

LOCAL_RULES = list(LOCAL_LOSS_NAMES)  # seed 004's local-loss rules
SEED004_RULES = ["backprop", *LOCAL_RULES]  # this file's subject; other families have their own tests
# Seed 004: β = 0.99 for predsim (§4), 0.01 for predsim-bio (§4.4); pred alone is β = 0, sim alone β = 1.
PAPER_BETA = {"pred": 0.0, "sim": 1.0, "predsim": 0.99, "pred-bio": 0.0, "sim-bio": 1.0, "predsim-bio": 0.01}
DIM_IN_DECODER = 64  # small, so that every conv block of the small VGG below is pooled


def small_vgg(rule_name: str, dropout: float = 0.0, num_classes: int = 10):
    """VGG8B with 1/16 of the filters on 16×16 input: block shapes (8,16,16), (16,16,16),
    (16,8,8), (32,8,8), (32,4,4), (32,2,2), (1024,) — every map a power of two."""
    return build_model("vgg8b", (3, 16, 16), num_classes, width_multiplier=1 / 16,
                       activation=default_activation(rule_name), dropout=dropout)


def small_mlp(rule_name: str, dropout: float = 0.0):
    return build_model("mlp", (1, 8, 8), 10, depth=3, width=32, activation=default_activation(rule_name),
                       dropout=dropout)


MODELS = {"vgg": small_vgg, "mlp": small_mlp}


def make_rule(rule_name: str, model_kind: str, init_seed: int = 0, dropout: float = 0.0, **rule_kwargs):
    """A rule on a small model whose initial weights come from ``init_seed``; ``rule_kwargs``
    go to build_rule (``seed`` there is the -bio target projection's)."""
    torch.manual_seed(init_seed)
    model = MODELS[model_kind](rule_name, dropout)
    if rule_name != "backprop":
        rule_kwargs.setdefault("dim_in_decoder", DIM_IN_DECODER)
    return build_rule(rule_name, model, lr=1e-3, **rule_kwargs)


def batch_for(rule, generator, batch: int = 24):
    x = torch.randn(batch, *rule.model.input_shape, generator=generator)
    return x, random_labels(batch, rule.model.num_classes, generator)


def all_state(rule) -> dict:
    """Every parameter and buffer the rule trains or keeps (network, heads, projection)."""
    return module_state(rule.trainable_modules())


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def module_state(module: nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


# ---------------------------------------------------------------- feedback alignment


def test_feedback_alignment_forward_is_linear(generator):
    torch.manual_seed(0)
    layer = LinearFeedbackAlignment(7, 5).double()
    x = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_shape", [(6,), (2, 3)])
def test_feedback_alignment_gradients_closed_form(bias, batch_shape, generator):
    """δx = δy B (not δy W); δW = δyᵀ x and δb = Σ δy, exactly nn.Linear's."""
    torch.manual_seed(0)
    layer = LinearFeedbackAlignment(7, 5, bias=bias).double()
    linear = nn.Linear(7, 5, bias=bias).double()
    linear.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "feedback"})
    x = torch.randn(*batch_shape, 7, generator=generator, dtype=torch.float64)
    grad_out = torch.randn(*batch_shape, 5, generator=generator, dtype=torch.float64)
    x_fa, x_bp = x.clone().requires_grad_(), x.clone().requires_grad_()
    layer(x_fa).backward(grad_out)
    linear(x_bp).backward(grad_out)

    feedback = layer.feedback
    torch.testing.assert_close(x_fa.grad, torch.einsum("...o,oi->...i", grad_out, feedback), rtol=1e-12, atol=1e-12)
    assert relative_error(x_fa.grad, x_bp.grad) > 0.1  # B is not W: the input gradient is not backprop's
    torch.testing.assert_close(x_bp.grad, grad_out @ layer.weight, rtol=1e-12, atol=1e-12)
    expected_weight = torch.einsum("...o,...i->oi", grad_out, x)
    torch.testing.assert_close(layer.weight.grad, expected_weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, linear.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(layer.bias.grad, grad_out.reshape(-1, 5).sum(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, linear.bias.grad, rtol=1e-12, atol=1e-12)


def test_feedback_alignment_parameter_gradients_pass_gradcheck(generator):
    """W and b get their true gradient (only the input's is replaced)."""
    torch.manual_seed(0)
    layer = LinearFeedbackAlignment(4, 3).double()
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)

    def output(weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(output, (weight, bias))


def test_feedback_matrix_is_a_fixed_buffer():
    torch.manual_seed(0)
    layer = LinearFeedbackAlignment(50, 20)
    assert "feedback" in dict(layer.named_buffers()) and "feedback" in layer.state_dict()
    assert all(p is not layer.feedback for p in layer.parameters())
    assert layer.feedback.shape == layer.weight.shape and not layer.feedback.requires_grad
    assert not torch.equal(layer.feedback, layer.weight)
    # Drawn like nn.Linear's weights: uniform in ±1/√fan_in.
    assert layer.feedback.abs().max() <= 50**-0.5


# ---------------------------------------------------------------- pooled_size


def test_pooled_size_vgg8b_mnist_gives_1024():
    """§4.1: pooling "chosen so that the input dimension to the local classifier was 1024"."""
    model = build_model("vgg8b", (1, 28, 28), 10)
    assert pooled_size((128, 28, 28), 1024) == (2, 4)  # 128·2·4 = 1024, h·w ≤ 8
    for shape in model.block_shapes[:-1]:
        height, width = pooled_size(shape, 1024)
        assert shape[0] * height * width == 1024, shape
        head = PredictionHead(shape, 10, 1024)
        assert head.classifier.in_features == 1024
        assert head(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("dim_in_decoder", [2048, 4096])  # §4.4: 2048 (pred), 4096 (-bio, Table 5)
def test_pooled_size_vgg8b_cifar(dim_in_decoder):
    model = build_model("vgg8b", (3, 32, 32), 10)
    assert pooled_size((128, 32, 32), 2048) == (4, 4)
    for shape in model.block_shapes[:-1]:
        height, width = pooled_size(shape, dim_in_decoder)
        assert shape[0] * height * width == min(dim_in_decoder, shape[0] * shape[1] * shape[2]), shape


def test_pooled_size_within_budget_and_no_coarser_than_needed():
    """C·h·w ≤ dim whenever C ≤ dim; each doubling of a kernel side at most halves
    the size, so the first size within budget is above dim/2; no pooling when it fits."""
    for channels in (1, 3, 16, 128, 512):
        for height in (1, 2, 3, 5, 7, 8, 13, 28, 32, 37):
            for width in (1, 4, 6, 9, 29, 32):
                for dim in (1, 8, 100, 1024, 2048):
                    if channels > dim:
                        continue
                    h, w = pooled_size((channels, height, width), dim)
                    assert 1 <= h <= height and 1 <= w <= width
                    if channels * height * width <= dim:
                        assert (h, w) == (height, width)
                    else:
                        assert dim / 2 < channels * h * w <= dim, (channels, height, width, dim, h, w)


def test_heads_reject_budget_below_channels():
    with pytest.raises(ValueError, match="dim_in_decoder"):
        PredictionHead((128, 8, 8), 10, 64)
    with pytest.raises(ValueError, match="dim_in_decoder"):
        SimilarityHead((128, 8, 8), learned=False, dim_in_decoder=64)


# ---------------------------------------------------------------- rule construction


@pytest.mark.parametrize("rule_name", LOCAL_RULES)
def test_default_beta_is_papers(rule_name):
    assert make_rule(rule_name, "mlp").beta == PAPER_BETA[rule_name]


@pytest.mark.parametrize("rule_name", ["backprop", "pred", "sim", "pred-bio", "sim-bio"])
def test_beta_without_both_losses_raises(rule_name):
    with pytest.raises(ValueError, match="beta"):
        make_rule(rule_name, "mlp", beta=0.5)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_beta_out_of_range_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        make_rule("predsim", "mlp", beta=beta)


def test_unknown_rule_lists_valid_names():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="hebb") as info:
        build_rule("hebb", small_mlp("pred"), lr=1e-3)
    assert all(name in str(info.value) for name in RULE_NAMES)


def test_default_activation_is_papers():
    """§4: ReLU for glob and pred, leaky ReLU for sim and predsim."""
    assert default_activation("backprop") == default_activation("pred") == "relu"
    assert default_activation("sim") == default_activation("predsim") == "leaky_relu"


@pytest.mark.parametrize("rule_name", LOCAL_RULES)
def test_each_block_has_its_own_optimiser(rule_name):
    """Block k's optimiser holds exactly block k's and its heads' parameters; the
    output layer's optimiser the output's; nothing is shared or left out."""
    rule = make_rule(rule_name, "vgg")
    groups = [[*block.parameters(), *heads.parameters()] for block, heads in zip(rule.model.blocks, rule.heads)]
    groups.append(list(rule.model.output.parameters()))
    optimizers = rule.optimizers()
    assert len(optimizers) == len(groups)
    for optimizer, expected in zip(optimizers, groups):
        held = [p for group in optimizer.param_groups for p in group["params"]]
        assert {id(p) for p in held} == {id(p) for p in expected}
    every = [*rule.model.parameters(), *rule.heads.parameters()]
    assert sum(len(group) for group in groups) == len({id(p) for p in every})


# ---------------------------------------------------------------- the local losses, closed form


def pool_to(h, shape, dim_in_decoder):
    """Average pooling with the kernel pooled_size implies (exact for power-of-two maps)."""
    height, width = pooled_size(shape, dim_in_decoder)
    assert shape[1] % height == 0 and shape[2] % width == 0
    return F.avg_pool2d(h, (shape[1] // height, shape[2] // width))


def expected_local_losses(model, heads, rule_name, beta, x, labels, dim_in_decoder, projection):
    """Seed 004 eqs. (4), (6)–(8) in float64 from copies of the modules before the step:
    (1 − β)·pred + β·sim for every block, the next block reading the previous one's output."""
    model, heads = copy.deepcopy(model).double().train(), copy.deepcopy(heads).double()
    bio = rule_name.endswith("-bio")
    num_classes = model.num_classes
    h_in, losses = x.double(), []
    with torch.no_grad():
        for block, head, shape in zip(model.blocks, heads, model.block_shapes):
            h = block.features(h_in)
            conv = h.dim() == 4
            loss = torch.zeros((), dtype=torch.float64)
            if beta < 1:
                classifier = head["pred"].classifier
                pooled = pool_to(h, shape, dim_in_decoder) if conv else h
                logits = F.linear(pooled.flatten(1), classifier.weight, classifier.bias)
                if bio:  # §3.3: predict the binarised random projection with binary cross-entropy
                    bits = (projection.double()[labels] > 0).double()
                    pred = F.binary_cross_entropy_with_logits(logits, bits)
                else:  # eq. (6)
                    pred = F.cross_entropy(logits, labels)
                loss = loss + (1 - beta) * pred
            if beta > 0:
                if bio:  # §3.3: average pooling (+ std), target S of the projected one-hot labels
                    features = pool_to(h, shape, dim_in_decoder) if conv else h
                    target = reference.similarity_matrix(F.one_hot(labels, num_classes).double() @ projection.double())
                    sim = reference.similarity_matching_loss(features, target=target)
                else:  # eq. (4): a 3×3 conv (then std over space) or a linear layer
                    transform = head["sim"].transform
                    features = (F.conv2d(h, transform.weight, transform.bias, padding=1) if conv
                                else F.linear(h, transform.weight, transform.bias))
                    sim = reference.similarity_matching_loss(features, labels, num_classes=num_classes)
                loss = loss + beta * sim
            losses.append(loss)
            h_in = block.emit(h)
    return losses


@pytest.mark.parametrize("model_kind", ["vgg", "mlp"])
@pytest.mark.parametrize(
    "rule_name, beta",
    [(name, None) for name in LOCAL_RULES] + [("predsim", 0.3), ("predsim-bio", 0.7)],
)
def test_local_losses_closed_form(rule_name, beta, model_kind, generator):
    kwargs = {} if beta is None else {"beta": beta}
    rule = make_rule(rule_name, model_kind, **kwargs)
    beta = PAPER_BETA[rule_name] if beta is None else beta
    x, labels = batch_for(rule, generator, batch=20)
    projection = rule.target_projection.matrix if rule_name.endswith("-bio") else None
    expected = expected_local_losses(rule.model, rule.heads, rule_name, beta, x, labels, DIM_IN_DECODER, projection)
    metrics = rule.train_step(x, labels)
    assert len(expected) == len(rule.model.blocks)
    for index, value in enumerate(expected):
        actual = metrics[f"loss/block{index}"]
        assert actual.dim() == 0
        assert actual.item() == pytest.approx(value.item(), rel=2e-5, abs=1e-7), f"block {index}"


@pytest.mark.parametrize("target_proj_size", [None, 32])
def test_pred_bio_predicts_bits_through_feedback_alignment(target_proj_size):
    kwargs = {} if target_proj_size is None else {"target_proj_size": target_proj_size}
    size = target_proj_size or 128  # §4.4: "a random target projection of size 128"
    for name in ("pred-bio", "predsim-bio"):
        rule = make_rule(name, "vgg", **kwargs)
        assert rule.target_projection.matrix.shape == (10, size)
        for heads in rule.heads:
            assert isinstance(heads["pred"].classifier, LinearFeedbackAlignment)
            assert heads["pred"].classifier.out_features == size
    for heads in make_rule("pred", "vgg").heads:
        assert type(heads["pred"].classifier) is nn.Linear and heads["pred"].classifier.out_features == 10


@pytest.mark.parametrize("model_kind", ["vgg", "mlp"])
@pytest.mark.parametrize("rule_name", SEED004_RULES)
def test_heads_and_output_layer_start_as_in_the_authors_code(rule_name, model_kind):
    """anokland/local-loss train.py (7b3b40b) zeroes every pred head's W (l. 499, 706; LinearFA's
    bias too, l. 460) and, when local losses train, the output layer's weight (l. 1241, the
    VGGs' classifier too); the sim heads' transforms (l. 503, 710), the feedback matrices
    and backprop's output layer keep their random initialisation."""
    rule = make_rule(rule_name, model_kind)
    output = rule.model.output.layer.weight
    assert torch.count_nonzero(output) == (output.numel() if rule_name == "backprop" else 0)
    for heads in getattr(rule, "heads", []):
        if "pred" in heads:
            classifier = heads["pred"].classifier
            assert torch.count_nonzero(classifier.weight) == 0
            if rule_name.endswith("-bio"):
                assert torch.count_nonzero(classifier.bias) == 0
                assert torch.count_nonzero(classifier.feedback) == classifier.feedback.numel()
        if "sim" in heads and not rule_name.endswith("-bio"):
            transform = heads["sim"].transform.weight
            assert torch.count_nonzero(transform) == transform.numel()


@pytest.mark.parametrize("rule_name, reaches_block", [("pred", False), ("pred-bio", True)])
def test_pred_bio_error_travels_through_feedback_matrix(rule_name, reaches_block, generator):
    """The local classifier's W starts at zero, so Wᵀδ is zero: the pred block learns
    nothing in the first step, the pred-bio block still learns through the feedback matrix B."""
    rule = make_rule(rule_name, "mlp")
    classifier = rule.heads[0]["pred"].classifier
    layer = rule.model.blocks[0].layer
    weight_before = layer.weight.detach().clone()
    feedback_before = classifier.feedback.clone() if reaches_block else None
    rule.train_step(*batch_for(rule, generator))
    assert torch.equal(layer.weight, weight_before) != reaches_block
    assert classifier.weight.abs().sum() > 0  # the classifier itself learned
    if reaches_block:
        assert torch.equal(classifier.feedback, feedback_before)  # B is never trained


@pytest.mark.parametrize("model_kind", ["vgg", "mlp"])
def test_sim_bio_has_no_learned_head(model_kind):
    """§3.3: sim-bio needs no back-propagation through a head: the heads hold no parameters."""
    rule = make_rule("sim-bio", model_kind)
    assert all(len(list(heads.parameters())) == 0 for heads in rule.heads)


def test_bio_target_is_fixed_random_projection_of_one_hot(generator):
    """§3.3: the one-hot target is replaced by a fixed random transformation of it (its
    S(·) is the sim-bio target and its sign the pred-bio bits, as the closed-form test
    above checks): rows of the same label are identical, other labels are not told
    apart as in S(Y) of the one-hot matrix, where all off-class entries are −1/9."""
    rule = make_rule("sim-bio", "mlp", seed=0)
    projection = rule.target_projection.matrix.clone()
    assert projection.shape == (10, 128)
    labels = random_labels(30, 10, generator)
    projected = rule.target_projection(labels)
    torch.testing.assert_close(projected, F.one_hot(labels, 10).float() @ projection, rtol=0, atol=0)
    same = labels[:, None] == labels[None, :]
    for i, j in same.nonzero().tolist():
        assert torch.equal(projected[i], projected[j])
    target = reference.similarity_matrix(projected.double())
    one_hot_target = reference.label_similarity_matrix(labels, 10, torch.float64)
    assert (target - one_hot_target)[~same].abs().max() > 0.05
    assert (target[~same] < 0.999).all()

    # Fixed: unchanged by training, not in any optimiser, a function of its seed only.
    for _ in range(3):
        rule.train_step(torch.randn(30, 1, 8, 8, generator=generator), labels)
    assert torch.equal(rule.target_projection.matrix, projection)
    held = {id(p) for optimizer in rule.optimizers() for group in optimizer.param_groups for p in group["params"]}
    assert id(rule.target_projection.matrix) not in held
    other_weights = make_rule("sim-bio", "mlp", init_seed=5, seed=0)
    assert torch.equal(other_weights.target_projection.matrix, projection)
    assert not torch.equal(make_rule("sim-bio", "mlp", seed=1).target_projection.matrix, projection)


# ---------------------------------------------------------------- no error crosses a block


def record_gradient_phases(rule):
    """Note, for every gradient a parameter receives, which part of the step was running:
    block k from the moment block k's features are computed, "output" from the moment
    the output layer runs. Returns the list of (owner, phase) it fills."""
    phase = {"now": None}
    events = []
    for index, block in enumerate(rule.model.blocks):
        original = block.features

        def features(h, _index=index, _original=original):
            phase["now"] = _index
            return _original(h)

        block.features = features
    rule.model.output.register_forward_pre_hook(lambda module, args: phase.__setitem__("now", "output"))
    heads = getattr(rule, "heads", None)
    owners = [(index, [*block.parameters(), *(heads[index].parameters() if heads is not None else [])])
              for index, block in enumerate(rule.model.blocks)]
    owners.append(("output", list(rule.model.output.parameters())))
    for owner, parameters in owners:
        for parameter in parameters:
            parameter.register_hook(lambda grad, _owner=owner: events.append((_owner, phase["now"])))
    return events, [owner for owner, _ in owners]


@pytest.mark.parametrize("model_kind", ["vgg", "mlp"])
@pytest.mark.parametrize("rule_name", SEED004_RULES)
def test_no_gradient_crosses_a_block(rule_name, model_kind, generator):
    """Block k's loss sends gradient to block k and its heads only, never to a lower block
    (§4: "the computational graph was detached after each hidden layer"); the output
    loss reaches only the output layer. Backprop is the control that this can fail."""
    rule = make_rule(rule_name, model_kind, dropout=0.1)
    events, owners = record_gradient_phases(rule)
    rule.train_step(*batch_for(rule, generator))
    crossing = [(owner, phase) for owner, phase in events if owner != phase]
    if rule_name == "backprop":
        assert {owner for owner, _ in crossing} == set(owners) - {"output"}
    else:
        assert crossing == []
        assert {owner for owner, _ in events} == set(owners)  # every block did learn


@pytest.mark.parametrize("model_kind", ["vgg", "mlp"])
@pytest.mark.parametrize("rule_name", SEED004_RULES)
def test_lower_blocks_do_not_see_higher_blocks(rule_name, model_kind, generator):
    """Two runs that differ only in block k's weights: after two full train_steps every
    block below k (and its heads) is bit-for-bit identical, every block from k up differs."""
    perturbed_block = 2
    probe = make_rule(rule_name, model_kind)
    x, labels = batch_for(probe, generator)
    noise = torch.randn(probe.model.blocks[perturbed_block].layer.weight.shape, generator=generator)

    def run(perturb: bool):
        rule = make_rule(rule_name, model_kind, dropout=0.1)
        if perturb:
            with torch.no_grad():
                weight = rule.model.blocks[perturbed_block].layer.weight
                weight.add_(noise * weight.std())
        torch.manual_seed(1)  # the same dropout masks in both runs
        for _ in range(2):
            rule.train_step(x, labels)
        heads = getattr(rule, "heads", None)
        return [(module_state(block), module_state(heads[index]) if heads is not None else {})
                for index, block in enumerate(rule.model.blocks)], module_state(rule.model.output)

    (blocks_a, output_a), (blocks_b, output_b) = run(False), run(True)
    for index, ((block_a, heads_a), (block_b, heads_b)) in enumerate(zip(blocks_a, blocks_b)):
        same = states_equal(block_a, block_b) and states_equal(heads_a, heads_b)
        if index < perturbed_block and rule_name != "backprop":
            assert same, f"block {index} changed with block {perturbed_block}'s weights"
        else:
            assert not same, f"block {index} did not change"  # backprop: the control that it can fail
    assert not states_equal(output_a, output_b)


# ---------------------------------------------------------------- checkpoints and activations


ROUND_TRIP_CASES = [(name, "mlp") for name in SEED004_RULES] + [("predsim", "vgg"), ("pred-bio", "vgg")]


@pytest.mark.parametrize("rule_name, model_kind", ROUND_TRIP_CASES)
def test_state_dict_round_trip(rule_name, model_kind, tmp_path, generator):
    """Save after a few steps, load into a fresh rule built with the same settings (but
    other initial weights): the next step leaves both bit-identical."""
    rule = make_rule(rule_name, model_kind, init_seed=0, dropout=0.1)
    x, labels = batch_for(rule, generator)
    for _ in range(3):
        rule.train_step(x, labels)
    path = tmp_path / "rule.pt"
    torch.save(rule.state_dict(), path)

    fresh = make_rule(rule_name, model_kind, init_seed=1, dropout=0.1)
    assert not states_equal(all_state(fresh), all_state(rule))
    fresh.load_state_dict(torch.load(path, weights_only=True))  # DESIGN.md: checkpoints load weights_only
    assert states_equal(all_state(fresh), all_state(rule))

    x2, labels2 = batch_for(rule, generator)
    for each in (rule, fresh):
        torch.manual_seed(7)
        each.train_step(x2, labels2)
    assert states_equal(all_state(fresh), all_state(rule))
    # Adam's moments came along too: a fresh optimiser would have taken a different step.
    restarted = make_rule(rule_name, model_kind, init_seed=1, dropout=0.1)
    restarted.trainable_modules().load_state_dict(torch.load(path, weights_only=True)["modules"])
    torch.manual_seed(7)
    restarted.train_step(x2, labels2)
    assert not states_equal(all_state(restarted), all_state(rule))


OTHER_RULE_PAIRS = [("backprop", "pred"), ("pred", "backprop"), ("pred", "sim"), ("sim", "pred"),
                    ("predsim", "pred"), ("pred", "pred-bio"), ("sim", "sim-bio"), ("predsim-bio", "predsim")]


@pytest.mark.parametrize("saved, loading", OTHER_RULE_PAIRS)
def test_load_state_of_other_rule_raises_value_error(saved, loading):
    state = make_rule(saved, "mlp", init_seed=0).state_dict()
    with pytest.raises(ValueError):
        make_rule(loading, "mlp", init_seed=1).load_state_dict(state)


@pytest.mark.parametrize("saved, loading", OTHER_RULE_PAIRS)
def test_rejected_state_leaves_rule_unchanged(saved, loading):
    state = make_rule(saved, "mlp", init_seed=0).state_dict()
    rule = make_rule(loading, "mlp", init_seed=1)
    before = all_state(rule)
    with pytest.raises(ValueError, match=f"the state is of rule '{saved}', not '{loading}'"):
        rule.load_state_dict(state)
    assert states_equal(all_state(rule), before)


@pytest.mark.parametrize("model_name, input_shape", [("vgg8b", (3, 16, 16)), ("allcnn-c-short", (3, 12, 12)),
                                                      ("mlp", (1, 8, 8))])
@pytest.mark.parametrize("rule_name", ["backprop", "predsim"])
def test_activations_one_per_block_plus_logits(rule_name, model_name, input_shape, generator):
    torch.manual_seed(0)
    model = build_model(model_name, input_shape, 7, width_multiplier=1 / 16, width=32, dropout=0.2)
    rule = build_rule(rule_name, model, lr=1e-3)
    x = torch.randn(5, *input_shape, generator=generator)
    rule.train_step(x, torch.arange(5) % 7)  # batch-norm statistics away from their initial values
    outputs = rule.activations(x)
    assert len(outputs) == len(model.blocks) + 1
    h = x
    with torch.no_grad():
        model.eval()
        for block, shape, output in zip(model.blocks, model.block_shapes, outputs):
            pooled = isinstance(block.pool, nn.MaxPool2d)
            expected_shape = (shape[0], shape[1] // 2, shape[2] // 2) if pooled else shape
            assert tuple(output.shape) == (5, *expected_shape)
            h = block(h)
            torch.testing.assert_close(output, h)  # evaluation mode: no dropout
        assert outputs[-1].shape == (5, 7)
        torch.testing.assert_close(outputs[-1], rule.predict(x))
    assert all(torch.equal(a, b) for a, b in zip(outputs, rule.activations(x)))


# ---------------------------------------------------------------- accuracy on real data


def digits_accuracy(rule_name: str, model_name: str, steps: int, *, freeze_hidden: bool = False, seed: int = 0,
                    channels_last: bool = False, amp: bool = False, **model_kwargs) -> float:
    """Test accuracy after ``steps`` batches of 128 at lr 1e-3 (Adam), everything seeded;
    optionally with NHWC conv layers and bfloat16 autocast."""
    x_train = normalised_digits()[0]
    torch.manual_seed(seed)
    model = build_model(model_name, tuple(x_train.shape[1:]), 10, activation=default_activation(rule_name),
                        **model_kwargs)
    if freeze_hidden:
        model.blocks.requires_grad_(False)
    rule = build_rule(rule_name, model, lr=1e-3, amp=amp)
    if channels_last:
        rule.use_channels_last()
    return digits_test_accuracy(rule, steps, seed=seed)


MLP = dict(depth=3, width=256)
MLP_STEPS, CONV_STEPS = 300, 150

# Measured with these settings on CPU (seed 0; range over seeds 0–4 in brackets):
# backprop 0.987 [0.987–0.993], pred 0.985 [0.985–0.989], sim 0.987 [0.980–0.989],
# predsim 0.987 [0.985–0.993], pred-bio 0.985 [0.981–0.989], sim-bio 0.981 [0.970–0.981],
# predsim-bio 0.985 [0.980–0.989]. Chance is 0.10; but an MLP whose hidden layers never
# learn (random frozen blocks, only the output layer trained) already reaches
# 0.952–0.959, so the bars sit above that, not just above chance.
MLP_BARS = {"backprop": 0.975, "pred": 0.975, "sim": 0.97, "predsim": 0.975, "pred-bio": 0.97,
            "sim-bio": 0.965, "predsim-bio": 0.97}
# allcnn-c-short, 150 steps: backprop 0.994 [0.985–0.994], predsim 0.983 [0.978–0.983];
# frozen random convolutions with a trained output layer: 0.79–0.83.
CONV_BARS = {"backprop": 0.97, "predsim": 0.96}


@pytest.fixture(scope="module")
def frozen_mlp_accuracy():
    return digits_accuracy("backprop", "mlp", MLP_STEPS, freeze_hidden=True, **MLP)


@pytest.mark.parametrize("rule_name", SEED004_RULES)
def test_mlp_learns_digits(rule_name, frozen_mlp_accuracy):
    accuracy = digits_accuracy(rule_name, "mlp", MLP_STEPS, **MLP)
    assert MLP_BARS[rule_name] > frozen_mlp_accuracy > 0.1  # the bar means the hidden layers learned
    assert accuracy >= MLP_BARS[rule_name], f"{rule_name}: {accuracy:.3f}"


@pytest.mark.parametrize("rule_name", ["backprop", "predsim"])
def test_allcnn_short_learns_digits(rule_name):
    accuracy = digits_accuracy(rule_name, "allcnn-c-short", CONV_STEPS)
    assert accuracy >= CONV_BARS[rule_name], f"{rule_name}: {accuracy:.3f}"


@pytest.mark.parametrize("rule_name", ["backprop", "predsim"])
def test_allcnn_short_learns_digits_in_channels_last_and_bfloat16(rule_name):
    """The NHWC + bf16 autocast path meets the fp32 bar (its activations are NHWC: checked)."""
    accuracy = digits_accuracy(rule_name, "allcnn-c-short", CONV_STEPS, channels_last=True, amp=True)
    assert accuracy >= CONV_BARS[rule_name], f"{rule_name}: {accuracy:.3f}"


def test_channels_last_rules_run_their_conv_layers_in_nhwc_and_bfloat16():
    torch.manual_seed(0)
    model = build_model("allcnn-c-short", (1, 8, 8), 10, activation="leaky_relu")
    rule = build_rule("predsim", model, lr=1e-3, amp=True)
    rule.use_channels_last()
    x = normalised_digits()[0][:16]
    with rule.autocast():
        features = model.blocks[0].features(x)
    assert features.dtype == torch.bfloat16
    assert features.dim() == 4 and features.is_contiguous(memory_format=torch.channels_last)
    assert not features.is_contiguous()
    assert all(parameter.is_contiguous(memory_format=torch.channels_last)
               for parameter in rule.trainable_modules().parameters() if parameter.dim() == 4)


def test_allcnn_short_bar_is_above_untrained_features():
    frozen = digits_accuracy("backprop", "allcnn-c-short", CONV_STEPS, freeze_hidden=True)
    assert 0.1 < frozen < min(CONV_BARS.values()) - 0.05


# ---------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@pytest.mark.parametrize("rule_name", ["predsim", "backprop"])
def test_training_steps_on_cuda_are_the_cpu_steps(rule_name, generator):
    """Three steps on a GPU (the CUDA kernels of the similarity op, fused SGD) against the same
    steps on the CPU, from the same weights and batch: float32 rounding apart (TF32 off; SGD,
    whose update is proportional to the gradient, so that rounding is not amplified)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        states, initial = [], None
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)
            model = small_mlp(rule_name).to(device)
            options = {} if rule_name == "backprop" else {"dim_in_decoder": DIM_IN_DECODER}
            rule = build_rule(rule_name, model, lr=0.1, optimizer="sgd", **options)
            initial = initial or {key: value.cpu() for key, value in all_state(rule).items()}
            x, y = batch_for(rule, torch.Generator().manual_seed(1))
            for _ in range(3):
                rule.train_step(x.to(device), y.to(device))
            states.append({key: value.cpu() for key, value in all_state(rule).items()})
    finally:
        torch.set_float32_matmul_precision(previous)
    assert any(not torch.equal(states[0][key], initial[key]) for key in initial)  # the steps moved the weights
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=1e-4, atol=1e-6, msg=key)
