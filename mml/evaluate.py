"""Evaluation of a stage: multi-view test of its models, metrics files, predictions and plots.

`evaluate_stage` tests every model of a stage with the "Dense k + Uniform m" views of
`evaluate` params, writes metrics/<stage>.json and predictions/<stage>/<k>.npz (class
probabilities, for ensembles) and logs metrics and a confusion matrix to the model's
MLflow run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mml import artifacts, tracking
from mml.artifacts import ModelMetrics, StageMetrics
from mml.config import Params
from mml.data.dataset import VideoClips, load_split, stage_caches
from mml.data.sampling import ViewPlan
from mml.distributed import pick_device, set_threads
from mml.fsio import atomic_write
from mml.inference import Prediction, predict_dataset
from mml.metrics import confusion_matrix, per_class_accuracy, summarize
from mml.models.factory import model_from_checkpoint


def evaluate_stage(params: Params, stage: str, *, show_progress: bool = True) -> StageMetrics:
    """Multi-view test of every model of `stage`; writes metrics, predictions, plots; logs them."""
    cfg = params.stage(stage)
    params = params.for_stage(stage)
    ann = load_split(params.dataset, "val")
    plan = ViewPlan(dense=params.evaluate.dense_views, uniform=params.evaluate.uniform_views)
    refs = [artifacts.model_ref(stage, k) for k in range(len(cfg.models))]
    paths = [artifacts.checkpoint_path(params.paths.checkpoints, ref) for ref in refs]
    device = pick_device(params.compute.device)
    set_threads(params.compute, params.loader.workers)
    loaded = [(model.to(device), meta) for model, meta in map(model_from_checkpoint, paths)]
    modalities = [meta["modality"] for _, meta in loaded]
    # Each model is tested alone on its modality, as it runs when deployed (mml predict); the
    # positions are those of training, whatever the peers (mml.data.sampling's time base).
    predictions: dict[int, Prediction] = {}
    skipped: set[str] = set()
    for modality in sorted(set(modalities)):
        ks = [k for k, m in enumerate(modalities) if m == modality]
        dataset = VideoClips(
            ann,
            params.clip,
            train=False,
            views=plan,
            modalities=[modality],
            caches=stage_caches(params, [modality]),
        )
        result = predict_dataset(
            [loaded[k][0] for k in ks],
            [modality] * len(ks),
            dataset,
            params.loader,
            batch_size=params.evaluate.batch_size,
            fuse=params.evaluate.fuse,
            label=f"{stage} evaluate {modality} ({plan})",
            show_progress=show_progress,
        )
        predictions |= dict(zip(ks, result.members, strict=True))
        skipped |= set(result.skipped)
    client, _ = tracking.client_and_experiment(params)
    models = {
        k: _report_model(params, refs[k], meta, predictions[k], ann.classes, client)
        for k, (_, meta) in enumerate(loaded)
    }
    report = StageMetrics(str(plan), params.evaluate.fuse, sorted(skipped), models)
    out = artifacts.metrics_path(params.paths.metrics, stage)
    artifacts.write_stage_metrics(out, report)
    parent = loaded[0][1].get("parent_run_id")
    if parent:
        tracking.log_artifacts(client, parent, [out], "evaluation")
    return report


def _report_model(
    params: Params, ref: str, meta: dict, pred: Prediction, classes: Sequence[str], client
) -> ModelMetrics:
    multilabel = bool(meta.get("multilabel"))
    metrics = summarize(pred.scores, pred.targets, multilabel)
    npz = artifacts.predictions_path(params.paths.predictions, ref)
    saved = artifacts.Predictions(
        ref, meta["modality"], pred.scores, pred.targets, tuple(pred.ids), tuple(classes)
    )
    artifacts.write_predictions(npz, saved)
    files, per_class_top1 = [npz], None
    if not multilabel:
        per_class = per_class_accuracy(pred.scores, pred.targets, len(classes))
        per_class_top1 = {c: _finite(a) for c, a in zip(classes, per_class, strict=True)}
        png = artifacts.confusion_plot(params.paths.plots, ref)
        title = f"{ref} ({meta['modality']}) top-1 {metrics['top1']:.1f}%"
        matrix = confusion_matrix(pred.scores, pred.targets, len(classes))
        plot_confusion(matrix, classes, png, title)
        files.append(png)
    if meta.get("run_id"):
        tracking.log_metrics(client, meta["run_id"], {f"test/{m}": v for m, v in metrics.items()})
        tracking.log_artifacts(client, meta["run_id"], files, "evaluation")
    return ModelMetrics(
        meta["modality"], meta.get("init", ""), metrics, per_class_top1, meta.get("run_id", "")
    )


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


def axis_labels(classes: Sequence[str], width: int = 24) -> list[str]:
    """Whole class names, wrapped at word boundaries into lines of about `width` characters
    (SSv2's names run to 80: cut, "Moving something from left t" hid the class)."""
    return [
        textwrap.fill(c, width, break_long_words=False, break_on_hyphens=False) or c
        for c in classes
    ]


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix as a PNG (written atomically)."""
    import matplotlib

    matrix_norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = axis_labels(classes)
    lines = max(label.count("\n") + 1 for label in labels)
    size = max(5.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5 + 0.1 * lines, size + 0.1 * lines))
    im = ax.imshow(matrix_norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), labels, rotation=75, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), labels, fontsize=7)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            color = "white" if matrix_norm[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
