"""Bad input to every public callable is refused with a clear error, before any work.

`CASES` holds one or more bad calls of each public callable without such a test elsewhere;
`TESTED_ELSEWHERE` names, for the others, the test that passes them bad input; `RECORDS`
lists the plain records that take no input of their own to check. The first test
requires every name in the public modules' ``__all__`` (constants and exception types
aside) to be in one of the three, and every test named in `TESTED_ELSEWHERE` to exist,
so a new public function without a bad-input test turns this module red.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from locallearn import analysis, data, engine, models, rules
from locallearn import nn as ll_nn
from locallearn.data.folder import ImageList

PUBLIC_MODULES = ("locallearn", "locallearn.analysis", "locallearn.data", "locallearn.engine", "locallearn.models",
                  "locallearn.nn", "locallearn.ops", "locallearn.rules")

TESTED_ELSEWHERE = {
    "locallearn.channel_std": "test_validation.py::test_channel_std_rejects",
    "locallearn.similarity_matching_loss": "test_validation.py::test_similarity_matching_loss_rejects",
    "locallearn.similarity_matrix": "test_validation.py::test_similarity_matrix_rejects",
    "locallearn.analysis.MinibatchCKA": "test_cka.py::test_bad_input_is_rejected_with_a_clear_error",
    "locallearn.analysis.TwoNN": "test_intrinsic_dimension.py::test_bad_input_errors",
    "locallearn.analysis.analyze_run": "test_analyze.py::test_bad_requests_say_why",
    "locallearn.analysis.cka": "test_cka.py::test_bad_input_is_rejected_with_a_clear_error",
    "locallearn.analysis.cka_matrix": "test_cka.py::test_bad_input_is_rejected_with_a_clear_error",
    "locallearn.analysis.class_separation":
        "test_rsa_separation.py::test_class_separation_bad_input_is_rejected_with_a_clear_error",
    "locallearn.analysis.collect_activations": "test_analyze.py::test_bad_requests_say_why",
    "locallearn.analysis.discrepancy_history": "test_alignment.py::test_discrepancy_history",
    "locallearn.analysis.id_profile": "test_intrinsic_dimension.py::test_bad_input_errors",
    "locallearn.analysis.nearest_neighbors": "test_neighbors.py::test_bad_input_errors",
    "locallearn.analysis.plot_embeddings": "test_embedding_plots.py::test_plots_refuse_bad_input",
    "locallearn.analysis.plot_heatmap": "test_embedding_plots.py::test_plots_refuse_bad_input",
    "locallearn.analysis.plot_id_profile": "test_embedding_plots.py::test_plots_refuse_bad_input",
    "locallearn.analysis.rdm": "test_rsa_separation.py::test_rsa_bad_input_is_rejected_with_a_clear_error",
    "locallearn.analysis.rsa": "test_rsa_separation.py::test_rsa_bad_input_is_rejected_with_a_clear_error",
    "locallearn.analysis.rsa_matrix": "test_rsa_separation.py::test_rsa_bad_input_is_rejected_with_a_clear_error",
    "locallearn.analysis.total_discrepancy": "test_alignment.py::test_total_discrepancy_sums_the_local_losses",
    "locallearn.analysis.twonn_dimension": "test_intrinsic_dimension.py::test_bad_input_errors",
    "locallearn.analysis.update_alignment": "test_alignment.py::test_bad_arguments",
    "locallearn.data.default_augmentation": "test_data.py::test_default_augmentation_follows_the_paper",
    "locallearn.data.load_dataset": "test_data.py::test_load_dataset_rejects_unknown_names_and_misplaced_options",
    "locallearn.engine.build_trainer": "test_layer_parallel.py::test_stages_that_do_not_cover_the_blocks_are_refused",
    "locallearn.engine.load_trained": "test_analyze.py::test_bad_requests_say_why",
    "locallearn.engine.resume_run": "test_distributed.py::test_errors_before_any_work",
    "locallearn.models.BlockSpec": "test_models.py::test_block_specs_refuse_bad_sizes",
    "locallearn.models.Classification": "test_models.py::test_tasks_refuse_shapes_that_would_broadcast",
    "locallearn.models.HiddenBlock": "test_models.py::test_channel_dropout_needs_feature_maps",
    "locallearn.models.Reconstruction": "test_models.py::test_tasks_refuse_shapes_that_would_broadcast",
    "locallearn.models.ResidualBlock": "test_resnet.py::test_bad_arguments",
    "locallearn.models.build_model": "test_models.py::test_bad_arguments",
    "locallearn.nn.Conv2dFeedbackAlignment": "test_feedback_alignment.py::test_conv_feedback_alignment_rejects_string_padding",
    "locallearn.nn.LocallyConnected2d": "test_lc_models.py::test_bad_layer_arguments",
    "locallearn.nn.LocallyConnectedTranspose2d": "test_lc_models.py::test_layer_rejects_input_of_the_wrong_shape",
    "locallearn.nn.convert_to_feedback_alignment": "test_feedback_alignment.py::test_converting_a_bare_layer_is_refused",
    "locallearn.ops.channel_std": "test_validation.py::test_channel_std_rejects",
    "locallearn.ops.difference_target": "test_difference_target.py::test_bad_input_raises_value_error_before_any_kernel",
    "locallearn.ops.direct_feedback": "test_direct_feedback.py::test_bad_input_raises_value_error_before_any_kernel",
    "locallearn.ops.locally_connected2d": "test_locally_connected.py::test_forward_rejects",
    "locallearn.ops.locally_connected2d_transpose": "test_locally_connected.py::test_transpose_and_weight_grad_reject",
    "locallearn.ops.locally_connected2d_weight_grad": "test_locally_connected.py::test_transpose_and_weight_grad_reject",
    "locallearn.ops.locally_connected_output_size": "test_locally_connected.py::test_output_size_rejects",
    "locallearn.ops.similarity_matching_loss": "test_validation.py::test_similarity_matching_loss_rejects",
    "locallearn.ops.similarity_matrix": "test_validation.py::test_similarity_matrix_rejects",
    "locallearn.rules.Backprop": "test_rules.py::test_load_state_of_other_rule_raises_value_error",
    "locallearn.rules.LocalLosses": "test_rules.py::test_beta_out_of_range_raises",
    "locallearn.rules.Rule": "test_rules.py::test_rejected_state_leaves_rule_unchanged",
    "locallearn.rules.build_rule": "test_rules.py::test_unknown_rule_lists_valid_names",
}

RECORDS = {
    "locallearn.analysis.ClassSeparation": "the result class_separation returns",
    "locallearn.data.Split": "a named tuple of tensors; Dataset.from_split checks them (CASES: Dataset)",
    "locallearn.engine.RunParts": "the parts build_parts returns",
    "locallearn.models.Task": "an abstract base: Classification and Reconstruction check their input",
}


def _image_list(count: int = 4) -> ImageList:
    return ImageList(tuple(Path(f"image{index}.jpg") for index in range(count)), torch.zeros(count, dtype=torch.long),
                     ("only",))


def _dataset(**changes) -> data.Dataset:
    fields = dict(name="tiny", x_train=torch.rand(6, 1, 4, 4), y_train=torch.tensor([0, 1, 2, 0, 1, 2]),
                  x_test=torch.rand(3, 1, 4, 4), y_test=torch.tensor([0, 1, 2]), num_classes=3, mean=(0.5,),
                  std=(0.2,))
    return data.Dataset(**{**fields, **changes})


def _loader(**changes) -> data.DeviceLoader:
    arguments = dict(batch_size=2, device="cpu", mean=(0.5,), std=(0.2,))
    return data.DeviceLoader(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 0, 1]), **{**arguments, **changes})


def _streaming(**changes) -> data.StreamingLoader:
    arguments = dict(image_size=16, batch_size=2, device="cpu", mean=(0.5,) * 3, std=(0.2,) * 3, workers=0)
    return data.StreamingLoader(_image_list(), **{**arguments, **changes})


def _streamed(**changes) -> data.StreamedDataset:
    arguments = dict(name="folder", train=_image_list(), test=_image_list(), image_size=16, mean=(0.5,) * 3,
                     std=(0.2,) * 3)
    return data.StreamedDataset(**{**arguments, **changes})


def _mlp() -> models.Network:
    return models.build_model("mlp", (1, 8, 8), 10, width=16, depth=1)


def _existing_run(tmp_path: Path) -> Path:
    (tmp_path / engine.CONFIG_NAME).write_text('rule = "backprop"\n', encoding="utf-8")
    return tmp_path


# (public name, the bad call (given pytest's tmp_path), the exception, a regex its message matches)
CASES = [
    # analysis
    ("locallearn.analysis.angle_between", lambda _: analysis.angle_between(torch.tensor([1.0, math.nan]),
                                                                          torch.ones(2)), ValueError, "NaN"),
    ("locallearn.analysis.angle_between", lambda _: analysis.angle_between([1.0, 0.0], torch.ones(2)), TypeError,
     "a must be a torch.Tensor"),
    ("locallearn.analysis.gram", lambda _: analysis.gram(torch.randn(5, 3), "cosine"), ValueError, "kernel"),
    ("locallearn.analysis.gram", lambda _: analysis.gram(torch.randn(5, 3), "rbf", sigma=0.0), ValueError, "sigma"),
    ("locallearn.analysis.gram", lambda _: analysis.gram(np.ones((5, 3))), TypeError, "torch.Tensor"),
    ("locallearn.analysis.gram", lambda _: analysis.gram(torch.tensor([[1.0, math.inf]])), ValueError, "infinite"),
    ("locallearn.analysis.hsic", lambda _: analysis.hsic(torch.triu(torch.ones(6, 6)), torch.eye(6)), ValueError,
     "k is not symmetric"),
    ("locallearn.analysis.tsne_embedding", lambda _: analysis.tsne_embedding(np.zeros((0, 5))), ValueError,
     "at least 2 examples"),
    ("locallearn.analysis.tsne_embedding", lambda _: analysis.tsne_embedding(np.zeros((10, 0)), perplexity=3),
     ValueError, "at least 1 feature"),
    # data
    ("locallearn.data.Augmentation", lambda _: data.Augmentation(cutout=-2), ValueError, "cutout must be an int"),
    ("locallearn.data.Augmentation", lambda _: data.Augmentation(crop_padding=2.5), ValueError,
     "crop_padding must be an int"),
    ("locallearn.data.Augmentation", lambda _: data.Augmentation(horizontal_flip="yes"), ValueError,
     "horizontal_flip must be True or False"),
    ("locallearn.data.Dataset", lambda _: _dataset(y_test=torch.tensor([0, 1, 3])), ValueError,
     "test split has label 3, but num_classes is 3"),
    ("locallearn.data.Dataset", lambda _: _dataset(x_test=torch.rand(3, 1, 5, 4)), ValueError,
     r"test images are \(1, 5, 4\) but the training images are \(1, 4, 4\)"),
    ("locallearn.data.Dataset", lambda _: _dataset(y_train=torch.tensor([0, 1, 2])), ValueError,
     "training split has 6 images but 3 labels"),
    ("locallearn.data.Dataset", lambda _: _dataset(mean=(0.5, 0.5), std=(0.2, 0.2)), ValueError,
     r"one value per channel \(1\)"),
    ("locallearn.data.Dataset", lambda _: _dataset(x_validation=torch.rand(2, 1, 4, 4)), ValueError,
     "both validation images and labels"),
    ("locallearn.data.Dataset", lambda _: _dataset(num_classes=0), ValueError, "num_classes must be a positive int"),
    ("locallearn.data.Dataset", lambda _: _dataset(x_train=torch.full((6, 1, 4, 4), math.nan)), ValueError,
     "NaN or infinite"),
    ("locallearn.data.Dataset", lambda _: _dataset().input_statistics("minmax"), ValueError, "unknown input scaling"),
    ("locallearn.data.DeviceLoader", lambda _: _loader(std=(0.0,)), ValueError,
     "std must be positive and finite.*input scaling 'unit'"),
    ("locallearn.data.DeviceLoader", lambda _: _loader(mean=(math.nan,)), ValueError, "mean must be finite"),
    ("locallearn.data.StreamedDataset", lambda _: _streamed(image_size=-3), ValueError, "image_size must be an integer"),
    ("locallearn.data.StreamedDataset", lambda _: _streamed(std=()), ValueError, "one value per RGB channel"),
    ("locallearn.data.StreamedDataset", lambda _: _streamed(test=None), ValueError, "test must be an ImageList"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(std=(0.2, 0.0, 0.2)), ValueError,
     "std must be positive and finite"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(mean=(0.5,)), ValueError, r"one value per channel \(3\)"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(bad_images="ignore"), ValueError,
     "bad_images must be one of stop, skip"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(workers=-1), ValueError, "workers must be"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(batch_size=0), ValueError, "batch_size must be"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(prefetch=0), ValueError, "prefetch must be"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(image_size=4), ValueError, "image_size must be"),
    ("locallearn.data.StreamingLoader", lambda _: _streaming(batch_size=8, drop_last=True), ValueError,
     "leaves no batch"),
    ("locallearn.data.load_streamed", lambda tmp: data.load_streamed("imagenett", tmp), ValueError,
     "unknown streamed dataset 'imagenett'; choose one of imagenet, folder"),
    ("locallearn.data.load_streamed", lambda tmp: data.load_streamed("folder", tmp, image_size=7), ValueError,
     "image_size must be an integer >= 8"),
    ("locallearn.data.load_streamed", lambda tmp: data.load_streamed("folder", tmp, bad_images="skipp"), ValueError,
     "bad_images must be one of"),
    ("locallearn.data.load_digits", lambda _: data.load_digits(test_fraction=1.5), ValueError,
     "test_fraction must be a number strictly between 0 and 1"),
    ("locallearn.data.load_digits", lambda _: data.load_digits(test_fraction=0.001), ValueError,
     "at least one image of each of the 10 classes"),
    ("locallearn.data.load_digits", lambda _: data.load_digits(seed=-1), ValueError, "seed must be an int"),
    # engine
    ("locallearn.engine.MetricsLog", lambda tmp: engine.MetricsLog(tmp / "missing"), ValueError, "is not a directory"),
    ("locallearn.engine.Schedule", lambda _: engine.Schedule(epochs=2, lr=-1.0), ValueError,
     "lr must be a positive finite rate"),
    ("locallearn.engine.Schedule", lambda _: engine.Schedule(epochs=2, lr=1e-3, lr_decay=5.0), ValueError,
     r"lr_decay .* must be in \(0, 1\]"),
    ("locallearn.engine.Schedule", lambda _: engine.Schedule(epochs=2, lr=1e-3, log_every=0), ValueError,
     "log_every must be at least 1"),
    ("locallearn.engine.Schedule", lambda _: engine.Schedule(epochs=2, lr=1e-3, keep_checkpoints=0), ValueError,
     "keep_checkpoints must be at least 1"),
    ("locallearn.engine.Schedule", lambda _: engine.Schedule(epochs=2, lr=1e-3, checkpoint_every=-1), ValueError,
     "checkpoint_every must be 0"),
    ("locallearn.engine.Schedule", lambda _: engine.Schedule(epochs=2, lr=1e-3, lr_milestones=(1.5,)), ValueError,
     r"fractions of training in \(0, 1\)"),
    ("locallearn.engine.TrainSettings", lambda _: engine.TrainSettings(device="gpu").resolved(), ValueError,
     "--device 'gpu'"),
    ("locallearn.engine.Trainer", lambda tmp: engine.Trainer(None, _loader(), _loader(),
                                                             engine.Schedule(epochs=1, lr=0.1), tmp),
     ValueError, "rule must be a locallearn Rule"),
    ("locallearn.engine.Trainer", lambda tmp: engine.Trainer(rules.build_rule("backprop", _mlp(), lr=0.1),
                                                             [], _loader(), engine.Schedule(epochs=1, lr=0.1), tmp),
     ValueError, "train_loader must be a DeviceLoader"),
    ("locallearn.engine.build_parts", lambda tmp: engine.build_parts(
        engine.TrainSettings(device="cuda", run_dir=str(tmp)).resolved()), ValueError, "no CUDA GPU is visible"),
    ("locallearn.engine.load_checkpoint", lambda tmp: engine.load_checkpoint(tmp / "none.pt"), FileNotFoundError,
     "no checkpoint at"),
    ("locallearn.engine.load_checkpoint", lambda tmp: engine.load_checkpoint(_write(tmp / "junk.pt", b"hello")),
     ValueError, "is not a locallearn checkpoint"),
    ("locallearn.engine.load_checkpoint", lambda tmp: engine.load_checkpoint(_torch_save(tmp / "list.pt", [1, 2])),
     ValueError, "it holds a list, not a dict"),
    ("locallearn.engine.load_checkpoint", lambda tmp: engine.load_checkpoint(_torch_save(tmp / "v9.pt", {"format": 9})),
     ValueError, "checkpoint format 9; this locallearn reads formats 1, 2"),
    ("locallearn.engine.read_metrics", lambda tmp: engine.read_metrics(
        _write(tmp / "metrics.jsonl", b'{"step": 1}\n{"step": \n').parent), ValueError, "line 2, is not JSON"),
    ("locallearn.engine.read_metrics", lambda tmp: engine.read_metrics(tmp), FileNotFoundError, "metrics.jsonl"),
    ("locallearn.engine.read_settings", lambda tmp: engine.read_settings(tmp), ValueError,
     "is not a run directory: it has no config.toml"),
    ("locallearn.engine.read_settings", lambda tmp: engine.read_settings(
        _write(tmp / engine.CONFIG_NAME, b"epochz = 3\n").parent), ValueError, r"unknown settings \['epochz'\]"),
    ("locallearn.engine.save_atomic", lambda tmp: engine.save_atomic([1, 2], tmp / "x.pt"), ValueError,
     "state must be a dict"),
    ("locallearn.engine.save_atomic", lambda tmp: engine.save_atomic({}, tmp), ValueError, "is a directory"),
    ("locallearn.engine.start_run", lambda tmp: engine.start_run(engine.TrainSettings(
        run_dir=str(_existing_run(tmp)), device="cpu"), progress=False), ValueError, "already holds a run"),
    # models
    ("locallearn.models.Network", lambda _: _mlp()(torch.randn(2, 64)), ValueError,
     r"takes input of shape \(B, 1, 8, 8\), got \(2, 64\)"),
    ("locallearn.models.Network", lambda _: _mlp()(torch.randn(2, 1, 8, 9)), ValueError, "takes input of shape"),
    ("locallearn.models.initialize", lambda _: models.initialize(_mlp(), "gaussian", std=math.inf), ValueError,
     "std must be a positive finite number"),
    ("locallearn.models.initialize", lambda _: models.initialize(_mlp(), "gaussian", std=0.0), ValueError,
     "std must be a positive finite number"),
    ("locallearn.models.initialize", lambda _: models.initialize("mlp"), ValueError, "model must be an nn.Module"),
    # nn
    ("locallearn.nn.DirectFeedback", lambda _: ll_nn.DirectFeedback(10, [5, 7])(torch.randn(2, 10), 2), ValueError,
     "layer 2 has no feedback matrix: this DirectFeedback has layers 0 to 1"),
    ("locallearn.nn.DirectFeedback", lambda _: ll_nn.DirectFeedback(10, [5, 7], mode="stored").matrix(-1), ValueError,
     "layer -1 has no feedback matrix"),
    ("locallearn.nn.DirectFeedback", lambda _: ll_nn.DirectFeedback(0, [5]), ValueError, "DFA needs K ≥ 1"),
    ("locallearn.nn.LinearFeedbackAlignment", lambda _: ll_nn.LinearFeedbackAlignment(0, 5), ValueError,
     "at least 1 input and 1 output feature"),
    ("locallearn.nn.LinearFeedbackAlignment", lambda _: ll_nn.LinearFeedbackAlignment(7, 5)(torch.randn(4, 3)),
     ValueError, r"takes \(\.\.\., 7\) input, got \(4, 3\)"),
    ("locallearn.nn.LocallyConnectedFeedbackAlignment",
     lambda _: ll_nn.LocallyConnectedFeedbackAlignment(3, 4, (8, 8), 3)(torch.randn(2, 3, 9, 8)), ValueError,
     r"expects input of shape \(B, 3, 8, 8\)"),
    ("locallearn.nn.LocallyConnectedFeedbackAlignment", lambda _: ll_nn.LocallyConnectedFeedbackAlignment(3, 4, (4, 4), 5),
     ValueError, "spans 5 along the height, more than the input.s 4"),
    ("locallearn.nn.PredictionHead", lambda _: ll_nn.PredictionHead((128, 8), 10, 1024), ValueError,
     r"\(features,\) or \(C, H, W\)"),
    ("locallearn.nn.PredictionHead", lambda _: ll_nn.PredictionHead((128,), 0, 1024), ValueError,
     "num_outputs must be a positive int"),
    ("locallearn.nn.SimilarityHead", lambda _: ll_nn.SimilarityHead((0, 8, 8)), ValueError, "positive ints"),
    ("locallearn.nn.feedback_columns", lambda _: ll_nn.feedback_columns(0, -1, 10, 0, 5), ValueError,
     r"layer must be an int in \[0, 4294967296\), got -1"),
    ("locallearn.nn.feedback_columns", lambda _: ll_nn.feedback_columns(0, 1, 10, 5, 3), ValueError,
     "stop must be an int in"),
    ("locallearn.nn.feedback_columns", lambda _: ll_nn.feedback_columns(0, 1, 0, 0, 3), ValueError,
     "num_rows must be an int"),
    ("locallearn.nn.feedback_columns", lambda _: ll_nn.feedback_columns(0.5, 1, 10, 0, 3), ValueError,
     "seed must be an int"),
    ("locallearn.nn.pooled_size", lambda _: ll_nn.pooled_size((128, 8), 1024), ValueError,
     r"three positive ints \(C, H, W\)"),
    ("locallearn.nn.pooled_size", lambda _: ll_nn.pooled_size((128, 8, 8), 0), ValueError,
     "dim_in_decoder must be a positive int"),
    # rules
    ("locallearn.rules.default_activation", lambda _: rules.default_activation("predsimm"), ValueError,
     "unknown rule 'predsimm'; choose one of"),
    ("locallearn.rules.default_batch_norm", lambda _: rules.default_batch_norm("hebb"), ValueError, "unknown rule"),
    ("locallearn.rules.default_batch_size", lambda _: rules.default_batch_size(None), ValueError,
     "unknown rule None"),
    ("locallearn.rules.default_depth", lambda _: rules.default_depth("eq-prop"), ValueError, "unknown rule"),
    ("locallearn.rules.rule_options", lambda _: rules.rule_options("hebb"), ValueError,
     "unknown rule 'hebb'; choose one of backprop"),
]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _torch_save(path: Path, value: object) -> Path:
    torch.save(value, path)
    return path


def _public_callables() -> set[str]:
    names = set()
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and not (inspect.isclass(value) and issubclass(value, BaseException)):
                names.add(f"{module_name}.{name}")
    return names


def _test_functions(file_name: str) -> set[str]:
    tree = ast.parse((Path(__file__).parent / file_name).read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_public_callable_has_a_bad_input_test():
    covered = {name for name, *_ in CASES} | set(TESTED_ELSEWHERE) | set(RECORDS)
    missing = sorted(_public_callables() - covered)
    assert not missing, f"public callables without a bad-input test: {missing}"
    stale = sorted(covered - _public_callables())
    assert not stale, f"names here that are not public callables: {stale}"
    for name, test in TESTED_ELSEWHERE.items():
        file_name, function = test.split("::")
        assert function in _test_functions(file_name), f"{name}: {test} does not exist"


def test_no_name_is_both_tested_here_and_elsewhere_or_a_record():
    here = {name for name, *_ in CASES}
    assert not here & set(TESTED_ELSEWHERE) and not here & set(RECORDS) and not set(TESTED_ELSEWHERE) & set(RECORDS)


@pytest.mark.parametrize("name, call, error, message", CASES, ids=[f"{case[0]}-{index}" for index, case in enumerate(CASES)])
def test_bad_input_is_refused_with_a_clear_error(name, call, error, message, tmp_path):
    if name == "locallearn.engine.build_parts" and torch.cuda.is_available():
        pytest.skip("the missing-GPU error needs a machine without one")
    with pytest.raises(error, match=message):
        call(tmp_path)


def test_a_refused_checkpoint_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        engine.save_atomic([1], tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_start_run_writes_nothing(tmp_path):
    run_dir = _existing_run(tmp_path)
    before = sorted(path.name for path in run_dir.iterdir())
    with pytest.raises(ValueError, match="already holds a run"):
        engine.start_run(engine.TrainSettings(run_dir=str(run_dir), device="cpu"), progress=False)
    assert sorted(path.name for path in run_dir.iterdir()) == before


def test_the_checks_leave_good_input_alone():
    """The new checks accept what the library itself passes: a bound they set too tight
    would break training, not only bad calls."""
    assert ll_nn.pooled_size((128, 28, 28), 1024) == (2, 4)
    assert ll_nn.feedback_columns(3, 0, 10, 0, 0).shape == (10, 0)
    assert ll_nn.DirectFeedback(10, [5, 7])(torch.randn(2, 10), 1).shape == (2, 7)
    assert data.load_digits(test_fraction=0.006).y_test.unique().numel() == 10
    network = _mlp()
    assert network(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    gram = analysis.gram(torch.randn(50, 300))
    assert analysis.hsic(gram, gram) > 0
    head = ll_nn.PredictionHead((16,), 10, 1024)
    assert head(torch.randn(2, 16)).shape == (2, 10)
