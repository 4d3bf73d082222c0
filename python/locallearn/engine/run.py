"""A training run from its settings: dataset, on-device loaders, model, rule and
trainer, and the run directory that holds the resolved settings (config.toml),
metrics.jsonl and checkpoints/. ``locallearn train`` is a thin layer over this."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from locallearn import config, data
from locallearn.engine import pipeline
from locallearn.engine.checkpoint import load_checkpoint
from locallearn.engine.distributed import (
    SINGLE_PROCESS,
    World,
    broadcast_from_main,
    broadcast_module_state,
    join,
    rank_device,
)
from locallearn.engine.schedule import PAPER_DECAY, PAPER_MILESTONES
from locallearn.engine.trainer import CHECKPOINT_NAME, Schedule, Trainer
from locallearn.data import BAD_IMAGE_POLICIES, INPUT_SCALINGS
from locallearn.models import ACTIVATIONS, INIT_SCHEMES, MODEL_NAMES, build_model, initialize
from locallearn.rules import (
    COMPILE_MODES,
    OPTIMIZERS,
    RULE_NAMES,
    Rule,
    build_rule,
    default_activation,
    default_batch_norm,
    default_batch_size,
    default_depth,
    rule_options,
)

CONFIG_NAME = "config.toml"
RULE_OPTIONS = sorted({option for name in RULE_NAMES for option in rule_options(name)})
"""Every rule-specific option; each is a TrainSettings field whose None means the rule's default."""


def _option(default, help: str, **argparse_options):
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class TrainSettings:
    """Everything that defines a run; each field is a ``locallearn train`` flag and a
    key of a ``--config`` TOML file."""

    rule: str = _option("predsim", "learning rule", choices=RULE_NAMES)
    model: str = _option("mlp", "architecture", choices=MODEL_NAMES)
    data: str = _option("digits", "dataset", choices=data.DATASET_NAMES)
    data_dir: str | None = _option(None, "directory holding the dataset's files (default: standard places)")
    train_subset: int | None = _option(None, "train on this many examples, class proportions kept", type=int)
    image_size: int = _option(224, "imagenet, folder: side of the square crops the network sees (training: "
                                   "random-resized crops; evaluation: resize to 256/224 of it, centre crop)",
                              type=int)
    workers: int | None = _option(None, "imagenet, folder: DataLoader worker processes decoding images, per "
                                        "process (default: the machine's cores shared among its processes, "
                                        "at most 8)", type=int)
    bad_images: str = _option("stop", "imagenet, folder: an unreadable image file stops the run ('stop', naming "
                                      "it) or is skipped and counted ('skip')", choices=BAD_IMAGE_POLICIES)
    validation: int = _option(0, "hold out this many training examples (class proportions kept) as a validation "
                                 "set: every epoch logs its error, checkpoints/best.pt keeps the epoch where it "
                                 "is lowest, and the run reports test error there (seed 002: 2000)", type=int)
    input_scaling: str = _option("standardize", "inputs standardised per channel ('standardize') or pixel/255 in "
                                                "[0, 1] ('unit', seed 002 §4)", choices=INPUT_SCALINGS)
    epochs: int = _option(10, "training epochs", type=int)
    batch_size: int | None = _option(None, "examples per step (default 128, seed 004; 32 for al, seed 001 §3)",
                                     type=int)
    lr: float = _option(5e-4, "Adam learning rate (seed 004: 5e-4)", type=float)
    lr_decay: float = _option(PAPER_DECAY, "learning-rate factor at each milestone", type=float)
    lr_milestones: tuple[float, ...] = _option(PAPER_MILESTONES, "fractions of training where the rate decays",
                                         type=float, nargs="*")
    dropout: float = _option(0.0, "dropout after every hidden nonlinearity", type=float)
    activation: str | None = _option(None, "nonlinearity (default: leaky_relu for sim rules, tanh for the "
                                           "TP/LRA family, elu for al, else relu)", choices=tuple(ACTIVATIONS))
    depth: int | None = _option(None, "MLP hidden layers (default 3; 1 for eqprop, Scellier & Bengio's first "
                                      "network)", type=int)
    width: int = _option(1024, "MLP hidden width", type=int)
    width_multiplier: float = _option(1.0, "scales every conv layer's channels (VGG, AllCNN)", type=float)
    batch_norm: bool | None = _option(None, "batch norm before each hidden nonlinearity (default: on, except "
                                            "for the target-propagation and LRA rules)",
                                      action=argparse.BooleanOptionalAction)
    init: str = _option("default", "weight initialisation", choices=INIT_SCHEMES)
    init_std: float = _option(0.05, "standard deviation of --init gaussian", type=float)
    optimizer: str = _option("adam", "optimiser of every trained part", choices=tuple(OPTIMIZERS))
    weight_decay: float = _option(0.0, "weight decay", type=float)
    # Rule options: None leaves the rule's own default.
    beta: float | None = _option(None, "predsim weight of sim (default 0.99; predsim-bio 0.01)", type=float)
    dim_in_decoder: int | None = _option(None, "pred head input size after average pooling (default 2048)",
                                         type=int)
    target_proj_size: int | None = _option(None, "size of the random target projection of the -bio rules "
                                                 "(default 128)", type=int)
    dfa_feedback: str | None = _option(None, "dfa: 'generated' computes the feedback matrices on the fly from "
                                             "a seed, 'stored' keeps them (default generated)",
                                       choices=("generated", "stored"))
    dfa_chunk: int | None = _option(None, "dfa: feedback columns multiplied at a time by 'stored' and by "
                                          "'generated' where the native op does not serve (default 16384)",
                                    type=int)
    target_step: float | None = _option(None, "dtp, dtp-sigma, sdtp, ddtp: step size of the top target "
                                              "(default: the rule's)", type=float)
    inverse_noise: float | None = _option(None, "dtp, sdtp, ao-sdtp: noise std of inverse training (default 0.1)",
                                          type=float)
    inverse_lr: float | None = _option(None, "DTP family: learning rate of the inverses (default: --lr)",
                                       type=float)
    schedule: str | None = _option(None, "DTP family: update forward weights and inverses every step "
                                         "('parallel') or in alternate epochs (default parallel)",
                                   choices=("parallel", "alternating"))
    hybrid_alpha: float | None = _option(None, "DTP family: α of hybrid targets, g = α·g_bp + (1−α)·g_tp "
                                               "(default 0)", type=float)
    aux_features: int | None = _option(None, "ao-sdtp: random auxiliary output features (default 512)", type=int)
    feedback_lr: float | None = _option(None, "ddtp: learning rate of the feedback mappings (default 0.005)",
                                        type=float)
    feedback_noise: float | None = _option(None, "ddtp: noise std of feedback training (default 0.1)", type=float)
    feedback_schedule: str | None = _option(None, "ddtp: train the feedback mappings once per 'epoch' or every "
                                                  "'step' (default epoch)", choices=("epoch", "step"))
    lra_beta: float | None = _option(None, "lra-e: β of the target computation (default 0.1)", type=float)
    lra_gamma: float | None = _option(None, "lra-e: γ, the error weights' rate relative to the forward "
                                            "weights' (default 1.0, as the authors' code; 0 keeps them fixed)",
                                      type=float)
    lra_update_rule: int | None = _option(None, "lra-e: update rule 1 (with φ') or 2 (without) (default 1)",
                                          type=int, choices=(1, 2))
    lra_loss: str | None = _option(None, "lra-e: local loss (default gaussian)", choices=("gaussian", "cauchy"))
    lra_error_std: float | None = _option(None, "lra-e: initial std of the error weights (default 1.0, as the "
                                                "authors' code)",
                                          type=float)
    lra_error_factor: float | None = _option(None, "lra-e: κ of the hidden error units e = −κ(y − z) (default 1, "
                                                   "seed 002 eq. (3) as printed, the authors' code; 2: eq. (5))",
                                             type=float)
    lra_output_error: str | None = _option(None, "lra-e: output error units of the target computation: 'nll', "
                                                 "−y/z (default, seed 002 eq. (2)), or 'residual', z − y (the "
                                                 "authors' code)", choices=("nll", "residual"))
    al_blocks_per_component: int | None = _option(None, "al: consecutive hidden blocks per component (default: "
                                                        "one, or a ResNet's stage)", type=int)
    al_bridge_depth: int | None = _option(None, "al: sigmoid layers of each bridge bᵢ (default 1; 0: none, "
                                                "eq. (3))", type=int)
    al_bridge_width: int | None = _option(None, "al: hidden width of deeper bridges (default: the target "
                                                "width)", type=int)
    al_target_width: int | None = _option(None, "al: width of every target tᵢ (default: that of sᵢ for linear "
                                                "blocks, 256 for conv blocks)", type=int)
    al_inverse_lr_factor: float | None = _option(None, "al: rate of the target encoders and decoders relative to "
                                                       "--lr (default 2, the authors' code)", type=float)
    eqprop_beta: float | None = _option(None, "eqprop: β of the weakly clamped phase (default 0.5 for 1 hidden "
                                              "layer, else 1.0, as Scellier & Bengio's code)", type=float)
    eqprop_free_steps: int | None = _option(None, "eqprop: settling steps of the free phase (default 20 / 150 / "
                                                  "500 for 1 / 2 / 3+ hidden layers)", type=int)
    eqprop_weak_steps: int | None = _option(None, "eqprop: settling steps of the weakly clamped phase "
                                                  "(default 4 / 6 / 8 for 1 / 2 / 3+ hidden layers)", type=int)
    eqprop_step_size: float | None = _option(None, "eqprop: step ε of the settling dynamics (default 0.5)",
                                             type=float)
    eqprop_random_sign: bool | None = _option(None, "eqprop: draw the sign of β per batch (default on)",
                                              action=argparse.BooleanOptionalAction)
    augment: bool = _option(True, "the paper's augmentation for the dataset (jitter, crop, flip)")
    cutout: int = _option(0, "cutout square size (0: none)", type=int)
    classes_per_batch: int | None = _option(None, "draw each batch from this many classes", type=int)
    seed: int = _option(0, "seed of initialisation, batch order and augmentation", type=int)
    device: str | None = _option(None, "cpu or cuda (default: cuda when visible)")
    amp: bool = _option(False, "bfloat16 autocast")
    channels_last: bool = _option(False, "conv layers in channels-last (NHWC) memory format")
    compile: bool = _option(False, "run every training step through torch.compile (docs/training.md)")
    compile_mode: str | None = _option(None, "torch.compile's mode for --compile (default: reduce-overhead, "
                                             "i.e. CUDA graphs, on a GPU; default on a CPU)",
                                       choices=COMPILE_MODES)
    deterministic: bool = _option(False, "torch deterministic algorithms (reproducible, slower; on a GPU "
                                            "sets CUBLAS_WORKSPACE_CONFIG=:4096:8 unless it is set)")
    log_every: int = _option(50, "steps between metrics.jsonl step records", type=int)
    checkpoint_every: int = _option(0, "also checkpoint every N steps within an epoch, so that a run killed "
                                       "mid-epoch resumes there (0: at epoch ends only)", type=int)
    keep_checkpoints: int = _option(2, "checkpoints kept, the newest as checkpoints/last.pt (best.pt besides)",
                                    type=int)
    divergence_check_every: int = _option(20, "steps between the host's reads of whether the losses are still "
                                              "finite (read late, without waiting for the device; a diverged "
                                              "run stops within twice this many steps)", type=int)
    world_size: int | None = _option(None, "processes training data-parallel: torchrun's WORLD_SIZE, recorded "
                                           "by the run; every process trains batch-size examples per step, so "
                                           "the global batch is world-size × batch-size", type=int)
    sync_batch_norm: bool = _option(False, "data-parallel on GPUs: batch-norm statistics over the global batch "
                                           "(torch.nn.SyncBatchNorm) instead of each process's own")
    layer_parallel: int | None = _option(None, "train the blocks as a pipeline of K stages, one per torchrun "
                                               "process, with no backward locking (local losses, al, dfa; "
                                               "docs/layer_parallel.md)", type=int)
    stages: tuple[int, ...] | None = _option(None, "--layer-parallel: blocks (AL: components) per stage, in "
                                                   "order (default: balanced by their measured step times)",
                                             type=int, nargs="+")
    sync: bool = _option(False, "--layer-parallel: wait for every send and receive (debugging)")
    tensorboard: bool = _option(False, "also write TensorBoard scalars (needs the tensorboard package)")
    run_dir: str | None = _option(None, "run directory (default: runs/DATA-MODEL-RULE-TIME)")

    def resolved(self, world: World = SINGLE_PROCESS) -> TrainSettings:
        """A copy with the defaults that depend on other settings, or on the ``world`` of
        processes this one belongs to, filled in."""
        check_layer_parallel(self, world)
        if self.world_size not in (None, world.size):
            raise ValueError(f"world-size {self.world_size} given, but this run has {world.size} process(es): "
                             f"start {self.world_size} with torchrun --nproc_per_node, or drop --world-size")
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        check_device(device)
        activation = self.activation or default_activation(self.rule)
        batch_norm = default_batch_norm(self.rule) if self.batch_norm is None else self.batch_norm
        batch_size = default_batch_size(self.rule) if self.batch_size is None else self.batch_size
        depth = default_depth(self.rule) if self.depth is None else self.depth
        run_dir = self.run_dir or str(Path("runs") / "-".join(
            [self.data, self.model, self.rule, datetime.datetime.now().strftime("%Y%m%d-%H%M%S")]))
        return dataclasses.replace(self, device=device, activation=activation, batch_norm=batch_norm,
                                   batch_size=batch_size, depth=depth, run_dir=run_dir, world_size=world.size)

    def to_dict(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


def check_device(device: str) -> None:
    """Refuse a device string that is not cpu, cuda or cuda:N, before anything is built."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: locallearn trains on 'cpu', 'cuda' or 'cuda:N' (GPU N)")


def check_layer_parallel(settings: TrainSettings, world: World) -> None:
    """Refuse a layer-parallel run that cannot work, before anything is built."""
    if settings.layer_parallel is None:
        if settings.stages is not None or settings.sync:
            raise ValueError("--stages and --sync are settings of --layer-parallel: add --layer-parallel K")
        return
    stages = settings.layer_parallel
    if stages < 1:
        raise ValueError(f"--layer-parallel needs at least 1 stage, got {stages}")
    if stages != world.size:
        raise ValueError(f"--layer-parallel {stages} needs {stages} processes, one per stage (torchrun "
                         f"--nproc_per_node {stages}); this run has {world.size}. Stages × data-parallel "
                         "replicas is not supported")
    if settings.stages is not None and len(settings.stages) != stages:
        raise ValueError(f"--stages gives {len(settings.stages)} stages and --layer-parallel {stages}")
    pipeline.check_rule(settings.rule)
    conflicts = {"--checkpoint-every": (settings.checkpoint_every, "a stage checkpoints at epoch ends only, "
                                                                   "when the pipeline is empty"),
                 "--compile": (settings.compile, "the stages train eagerly"),
                 "--sync-batch-norm": (settings.sync_batch_norm, "every stage normalises over the whole batch")}
    for flag, (value, reason) in conflicts.items():
        if value:
            raise ValueError(f"--layer-parallel does not combine with {flag}: {reason}")


def settings_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainSettings))


@dataclass
class RunParts:
    """What a run is made of, before the trainer: the dataset, its loaders (on-device, or
    streaming from image files) and the rule (which holds the model)."""

    dataset: data.Dataset | data.StreamedDataset
    train_loader: data.DeviceLoader | data.StreamingLoader
    test_loader: data.DeviceLoader | data.StreamingLoader
    rule: Rule
    validation_loader: data.DeviceLoader | data.StreamingLoader | None = None


RANK_SEED_STRIDE = 1_000_033
"""Rank r > 0 of a data-parallel run reseeds its global RNG (dropout, noise) with seed + r × this
after building, so that ranks draw independent noise; rank 0 keeps a single process's stream."""


def use_deterministic_algorithms(enabled: bool, device: torch.device) -> None:
    """torch's deterministic algorithms (--deterministic); on a GPU, cuBLAS needs a fixed
    workspace for them (CUBLAS_WORKSPACE_CONFIG, set here unless the user set it), or its
    first matrix product raises."""
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


def build_parts(settings: TrainSettings, world: World = SINGLE_PROCESS) -> RunParts:
    """Dataset, loaders, model and rule from fully resolved settings, seeded by them; for a
    rank of a data-parallel run, its shard of every loader and rank 0's parameters."""
    device = torch.device(rank_device(world, settings.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is visible")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} requested but {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if settings.sync_batch_norm and world.is_distributed and device.type != "cuda":
        raise ValueError("--sync-batch-norm needs GPUs: torch.nn.SyncBatchNorm has no CPU implementation; "
                         "on CPUs every process normalises over its own batch")
    torch.manual_seed(settings.seed)
    use_deterministic_algorithms(settings.deterministic, device)
    # every stage of a layer-parallel run sees whole batches; the evaluation is sharded as in data-parallel runs
    train_shard = (0, 1) if settings.layer_parallel else (world.rank, world.size)
    if settings.data in data.STREAMED_DATASETS:
        dataset, train_loader, test_loader, validation_loader = _streamed_loaders(settings, device, world,
                                                                                  train_shard)
    else:
        dataset, train_loader, test_loader, validation_loader = _in_memory_loaders(settings, device, world,
                                                                                   train_shard)
    model = build_model(settings.model, dataset.input_shape, dataset.num_classes, depth=settings.depth,
                        width=settings.width, width_multiplier=settings.width_multiplier,
                        activation=settings.activation, dropout=settings.dropout,
                        batch_norm=settings.batch_norm).to(device)
    initialize(model, settings.init, settings.init_std)
    if settings.sync_batch_norm:
        if not any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules()):
            raise ValueError(f"--sync-batch-norm: {model.name} has no batch norm (--batch-norm is off)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    options = {name: getattr(settings, name) for name in RULE_OPTIONS if getattr(settings, name) is not None}
    rule = build_rule(settings.rule, model, lr=settings.lr, optimizer=settings.optimizer,
                      weight_decay=settings.weight_decay, amp=settings.amp, seed=settings.seed,
                      init=settings.init, init_std=settings.init_std, **options)
    if world.is_distributed:
        broadcast_module_state(rule.trainable_modules())
        torch.manual_seed(settings.seed + world.rank * RANK_SEED_STRIDE)
    return RunParts(dataset, train_loader, test_loader, rule, validation_loader)


def _in_memory_loaders(settings: TrainSettings, device: torch.device, world: World,
                       train_shard: tuple[int, int]) -> tuple:
    """The dataset held on ``device`` and its train, test and validation (or None) loaders."""
    dataset = data.load_dataset(settings.data, settings.data_dir, seed=settings.seed,
                                train_subset=settings.train_subset, validation=settings.validation)
    augmentation = data.default_augmentation(settings.data) if settings.augment else data.Augmentation()
    augmentation = dataclasses.replace(augmentation, cutout=settings.cutout)
    mean, std = dataset.input_statistics(settings.input_scaling)
    common = dict(batch_size=settings.batch_size, device=device, mean=mean, std=std, shard=(world.rank, world.size))
    # Full batches only: batch norm and the similarity loss need more than one example,
    # and the examples left over are in next epoch's reshuffle.
    train_loader = data.DeviceLoader(dataset.x_train, dataset.y_train, augmentation=augmentation, shuffle=True,
                                     drop_last=True, classes_per_batch=settings.classes_per_batch,
                                     **{**common, "shard": train_shard})
    test_loader = data.DeviceLoader(dataset.x_test, dataset.y_test, shuffle=False, **common)
    validation_loader = (None if dataset.x_validation is None else
                         data.DeviceLoader(dataset.x_validation, dataset.y_validation, shuffle=False, **common))
    return dataset, train_loader, test_loader, validation_loader


def _streamed_loaders(settings: TrainSettings, device: torch.device, world: World,
                      train_shard: tuple[int, int]) -> tuple:
    """The image tree's files and their streaming train, test and validation (or None) loaders."""
    if settings.cutout or settings.classes_per_batch is not None:
        raise ValueError(f"--cutout and --classes-per-batch apply to in-memory datasets, not {settings.data!r}")
    dataset = data.load_streamed(settings.data, settings.data_dir, image_size=settings.image_size,
                                 seed=settings.seed, train_subset=settings.train_subset,
                                 validation=settings.validation, bad_images=settings.bad_images)
    mean, std = dataset.input_statistics(settings.input_scaling)
    workers = default_workers() if settings.workers is None else settings.workers
    common = dict(image_size=settings.image_size, batch_size=settings.batch_size, device=device, mean=mean,
                  std=std, shard=(world.rank, world.size), workers=workers, bad_images=settings.bad_images)
    train_loader = data.StreamingLoader(dataset.train, augment=settings.augment, shuffle=True, drop_last=True,
                                        **{**common, "shard": train_shard})
    test_loader = data.StreamingLoader(dataset.test, augment=False, shuffle=False, **common)
    validation_loader = (None if dataset.validation is None else
                         data.StreamingLoader(dataset.validation, augment=False, shuffle=False, **common))
    return dataset, train_loader, test_loader, validation_loader


def default_workers() -> int:
    """Decoding workers per process: the cores this machine has, shared among its processes
    (torchrun's LOCAL_WORLD_SIZE), at most 8."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 1) // local_processes))


def build_trainer(settings: TrainSettings, *, progress: bool = True, world: World = SINGLE_PROCESS) -> Trainer:
    """Everything a run needs, from fully resolved settings."""
    parts = build_parts(settings, world)
    schedule = Schedule(settings.epochs, settings.lr, tuple(settings.lr_milestones), settings.lr_decay,
                        settings.log_every, settings.seed, settings.checkpoint_every, settings.keep_checkpoints,
                        settings.divergence_check_every)
    if settings.channels_last:
        parts.rule.use_channels_last()
    if settings.compile:
        parts.rule.compile(settings.compile_mode)
    elif settings.compile_mode is not None:
        raise ValueError("--compile-mode is a setting of --compile: add --compile")
    return Trainer(parts.rule, parts.train_loader, parts.test_loader, schedule, settings.run_dir, progress=progress,
                   tensorboard=settings.tensorboard, validation_loader=parts.validation_loader, world=world,
                   pipeline=_layer_pipeline(settings, parts, world, progress))


def _layer_pipeline(settings: TrainSettings, parts: RunParts, world: World,
                    progress: bool) -> pipeline.LayerPipeline | None:
    """This process's stage of a layer-parallel run (None for other runs); the split is
    rank 0's, measured on the first training batch unless --stages gives it."""
    if not settings.layer_parallel:
        return None
    if parts.rule.model.task.error_name != "error":
        raise ValueError(f"--layer-parallel trains classifiers; {parts.rule.model.name} reconstructs its input")
    batch = (None if settings.stages or not world.is_main
             else next(iter(parts.train_loader.epoch(torch.Generator().manual_seed(settings.seed)))))
    stages = pipeline.plan_stages(parts.rule, world, settings.stages, batch)
    layer_pipeline = pipeline.LayerPipeline(parts.rule, world, stages, sync=settings.sync)
    if progress and world.is_main:
        print(f"layer-parallel: {layer_pipeline.describe()}", flush=True)
    return layer_pipeline


def start_run(settings: TrainSettings, *, progress: bool = True, world: World = SINGLE_PROCESS) -> Trainer:
    """A new run: refuses a run directory that already holds one, writes config.toml. In a
    data-parallel run every rank calls this; rank 0's settings (its run directory) hold."""
    settings = broadcast_from_main(settings.resolved(world))
    join(world, rank_device(world, settings.device))
    run_dir = Path(settings.run_dir)
    if broadcast_from_main((run_dir / CONFIG_NAME).exists()):
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                         "or choose another --run-dir")
    trainer = build_trainer(settings, progress=progress, world=world)
    if world.is_main:
        (run_dir / CONFIG_NAME).write_text(config.dump_toml(settings.to_dict()), encoding="utf-8")
    return trainer


def read_settings(run_dir: str | Path) -> TrainSettings:
    """The settings a run directory's config.toml holds, with ``run_dir`` set to it."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise ValueError(f"{run_dir} is not a run directory: it has no {CONFIG_NAME}")
    return dataclasses.replace(settings_from_toml(run_dir / CONFIG_NAME), run_dir=str(run_dir))


def settings_from_toml(path: str | Path) -> TrainSettings:
    """The settings a TOML file (a run's config.toml or a recipe) holds, unresolved; keys in the
    flags' spelling (``batch-size``); an unknown key is an error naming it."""
    values = {key.replace("-", "_"): value for key, value in config.load_toml(path).items()}
    known = {item.name for item in settings_fields()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path} has unknown settings {unknown}")
    return TrainSettings(**values)


def resume_run(run_dir: str | Path, *, progress: bool = True, world: World = SINGLE_PROCESS) -> Trainer:
    """The run in ``run_dir``, rebuilt from its config.toml and restored from its last
    checkpoint, with as many processes as it was started with."""
    settings = read_settings(run_dir)
    recorded = settings.world_size or 1
    if recorded != world.size:
        raise ValueError(f"{run_dir} was started with {recorded} process(es) and this resumption has {world.size}: "
                         f"every step's global batch would differ; resume it with {recorded} (torchrun "
                         f"--nproc_per_node and --nnodes)")
    join(world, rank_device(world, settings.device))
    trainer = build_trainer(settings, progress=progress, world=world)
    if trainer.checkpoint_path.is_file():
        trainer.resume()
    else:  # stopped before its first checkpoint: start over
        trainer.log.truncate(0)
    return trainer


def load_trained(run_dir: str | Path, *, device: str | None = None) -> tuple[TrainSettings, RunParts, int]:
    """A finished or interrupted run, read-only: its settings, its parts with the rule
    restored from the last checkpoint, and the number of epochs that checkpoint holds.
    Nothing in ``run_dir`` is written. ``device`` overrides the run's own."""
    settings = read_settings(run_dir)
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise ValueError(f"{run_dir} has no checkpoint yet ({CHECKPOINT_NAME}): train at least one epoch")
    if device is not None:
        settings = dataclasses.replace(settings, device=device)
    elif settings.device == "cuda" and not torch.cuda.is_available():
        settings = dataclasses.replace(settings, device="cpu")
    parts = build_parts(settings)
    state = load_checkpoint(checkpoint, map_location=settings.device)
    parts.rule.load_state_dict(state["rule"])
    return settings, parts, state["epoch"]
