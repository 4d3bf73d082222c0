"""`locallearn analyze RUN_DIR`: the representations of a trained run measured and drawn.

The run is rebuilt from its config.toml and last checkpoint (read-only), the first
``max_samples`` examples of the chosen split go through it, and every layer's
activations (each hidden block, then the output) are measured: TwoNN intrinsic
dimension with its 95% interval (seed 000 Fig. 3, the "hunchback"), CKA and RSA
between layers (seed 000 §III-B), the class separation of seed 001 §3.2, and t-SNE
panels (seed 001 Fig. 3). The report also holds the angle between the rule's update
and backprop's on the first batch at the checkpoint, per layer (seed 002 Fig. 1a), and
the total discrepancy of every logged epoch (seed 002 Fig. 1b). With ``compare`` a second
run on the same data goes through the same examples and CKA / RSA are computed across the
two networks too.
Figures (PNG) and ``analysis.json`` go to ``RUN_DIR/figures/``; nothing else in the
run directory is touched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from locallearn import data
from locallearn.analysis.alignment import discrepancy_history, update_alignment
from locallearn.analysis.cka import cka_matrix
from locallearn.analysis.embedding import tsne_embedding
from locallearn.analysis.intrinsic_dimension import id_profile
from locallearn.analysis.plots import plot_embeddings, plot_heatmap, plot_id_profile
from locallearn.analysis.rsa import rsa_matrix
from locallearn.analysis.separation import class_separation

SPLITS = ("test", "train")
FIGURES_DIR = "figures"
REPORT_NAME = "analysis.json"


@dataclass
class RunActivations:
    """Every layer's representation of the same examples, from one trained run."""

    name: str  # the run directory's name
    data: str
    epoch: int
    layer_names: list[str]
    layers: list[Tensor]  # (N, features) float32, one per layer
    labels: Tensor  # (N,)
    alignment: dict[str, float | None]  # module → degrees from backprop's update, first batch
    discrepancy: list[tuple[int, float]]  # (step, total discrepancy) at the end of each epoch


def collect_activations(run_dir: str | Path, *, split: str = "test", max_samples: int = 2000,
                        device: str | None = None, batch_size: int = 256) -> RunActivations:
    """The activations of the first ``max_samples`` examples of ``split`` (in the dataset's
    order, without augmentation) through the run's last checkpoint."""
    from locallearn.engine.run import load_trained

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if max_samples < 4:
        raise ValueError(f"max_samples must be at least 4 (CKA's unbiased estimator and TwoNN need a few "
                         f"examples), got {max_samples}")
    settings, parts, epoch = load_trained(run_dir, device=device)
    mean, std = parts.dataset.input_statistics(settings.input_scaling)  # as the run saw its inputs
    if isinstance(parts.dataset, data.StreamedDataset):
        files = parts.dataset.test if split == "test" else parts.dataset.train
        loader = data.StreamingLoader(files.subset(torch.arange(min(max_samples, len(files)))),
                                      image_size=settings.image_size, batch_size=batch_size, device=settings.device,
                                      mean=mean, std=std, augment=False, shuffle=False, workers=0,
                                      bad_images=settings.bad_images)
    else:
        images = parts.dataset.x_test if split == "test" else parts.dataset.x_train
        labels = parts.dataset.y_test if split == "test" else parts.dataset.y_train
        loader = data.DeviceLoader(images[:max_samples], labels[:max_samples], batch_size=batch_size,
                                   device=settings.device, mean=mean, std=std, shuffle=False)
    inputs = list(loader.epoch())
    batches = [(parts.rule.activations(x), y) for x, y in inputs]
    layers = [torch.cat([outputs[index].flatten(1) for outputs, _ in batches]) for index in range(len(batches[0][0]))]
    names = [f"block{index}" for index in range(len(layers) - 1)] + ["output"]
    alignment = update_alignment(parts.rule, *inputs[0], per="module")
    return RunActivations(Path(run_dir).name, settings.data, epoch, names, layers,
                          torch.cat([y for _, y in batches]), alignment, discrepancy_history(run_dir, kind="epoch"))


def analyze_run(run_dir: str | Path, *, compare: str | Path | None = None, split: str = "test",
                max_samples: int = 2000, device: str | None = None, tsne_layers: Sequence[str] | None = None,
                progress: bool = True) -> dict:
    """Measure one run (and its comparison with ``compare``), write the figures and
    ``analysis.json`` under ``RUN_DIR/figures/`` and return the report."""
    figures = Path(run_dir) / FIGURES_DIR
    runs = [collect_activations(run_dir, split=split, max_samples=max_samples, device=device)]
    if compare is not None:
        other = collect_activations(compare, split=split, max_samples=max_samples, device=device)
        if other.data != runs[0].data or len(other.labels) != len(runs[0].labels):
            raise ValueError(f"{compare} ran on {other.data!r} ({len(other.labels)} {split} examples) and "
                             f"{run_dir} on {runs[0].data!r} ({len(runs[0].labels)}): comparing layers needs "
                             "the same examples")
        if other.name == runs[0].name:
            other.name += "-compared"
        runs.append(other)
    embedded = [_tsne_layers(run.layer_names, tsne_layers) for run in runs]  # refuse unknown layers before work
    report = {"run": str(run_dir), "split": split, "samples": len(runs[0].labels), "runs": {}}
    for run, chosen in zip(runs, embedded):
        report["runs"][run.name] = _measure_run(run, figures, chosen, progress)
    if compare is not None:
        report["compare"] = {"run": str(compare), **_compare_runs(runs[0], runs[1], figures)}
    figures.mkdir(parents=True, exist_ok=True)
    (figures / REPORT_NAME).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def _measure_run(run: RunActivations, figures: Path, chosen: list[str], progress: bool) -> dict:
    stages = tqdm(total=4, desc=f"analyze {run.name}", disable=not progress, leave=False)
    estimators = id_profile(run.layers, show_progress=progress)
    dimensions = [estimator.dimension_ for estimator in estimators]
    intervals = [tuple(estimator.confidence_interval_) for estimator in estimators]
    plot_id_profile(dimensions, intervals, run.layer_names, figures / f"{run.name}-intrinsic-dimension.png",
                    title=f"Intrinsic dimension: {run.name}")
    stages.update()
    cka = cka_matrix(run.layers).cpu()
    plot_heatmap(cka, run.layer_names, run.layer_names, f"CKA: {run.name}", figures / f"{run.name}-cka.png")
    rsa = rsa_matrix(run.layers).cpu()
    plot_heatmap(rsa, run.layer_names, run.layer_names, f"RSA: {run.name}", figures / f"{run.name}-rsa.png")
    stages.update()
    separations = [class_separation(layer, run.labels) for layer in run.layers]
    stages.update()
    embeddings = {}
    for name in chosen:
        # scikit-learn's default perplexity, lowered for a small sample (it must stay below N).
        perplexity = min(30.0, (len(run.labels) - 1) / 3)
        points, kept = tsne_embedding(run.layers[run.layer_names.index(name)], perplexity=perplexity)
        embeddings[name] = (points, run.labels[torch.as_tensor(kept)].cpu().numpy())
    plot_embeddings(embeddings, figures / f"{run.name}-tsne.png")
    stages.update()
    stages.close()
    return {
        "epoch": run.epoch,
        "layers": run.layer_names,
        "features": [layer.shape[1] for layer in run.layers],
        "intrinsic_dimension": [{"layer": name, "dimension": dimension, "ci95": list(interval)}
                                for name, dimension, interval in zip(run.layer_names, dimensions, intervals)],
        "cka": cka.tolist(),
        "rsa": rsa.tolist(),
        "class_separation": [{"layer": name, "inter": s.inter, "intra": s.intra, "ratio": s.ratio}
                             for name, s in zip(run.layer_names, separations)],
        "tsne_layers": chosen,
        "alignment_degrees": run.alignment,
        "discrepancy": [{"step": step, "total": total} for step, total in run.discrepancy],
    }


def _compare_runs(first: RunActivations, second: RunActivations, figures: Path) -> dict:
    cka = cka_matrix(first.layers, second.layers).cpu()
    rsa = rsa_matrix(first.layers, second.layers).cpu()
    stem = f"{first.name}-vs-{second.name}"
    plot_heatmap(cka, first.layer_names, second.layer_names, f"CKA: {first.name} (rows) vs {second.name}",
                 figures / f"{stem}-cka.png")
    plot_heatmap(rsa, first.layer_names, second.layer_names, f"RSA: {first.name} (rows) vs {second.name}",
                 figures / f"{stem}-rsa.png")
    return {"cka": cka.tolist(), "rsa": rsa.tolist()}


def _tsne_layers(layer_names: list[str], chosen: Sequence[str] | None) -> list[str]:
    """The layers to embed: the last hidden block and the output unless chosen."""
    if chosen is None:
        return layer_names[-2:]
    unknown = [name for name in chosen if name not in layer_names]
    if unknown:
        raise ValueError(f"no layer {', '.join(unknown)}; the layers are {', '.join(layer_names)}")
    return list(chosen)
