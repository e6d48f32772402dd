"""Evaluation of a stage: multi-view test of its models, metrics files, predictions and plots.

`evaluate_stage` tests every model of a stage with the "Dense k + Uniform m" views of
`evaluate` params, writes metrics/<stage>.json and predictions/<stage>/<k>.npz (class
probabilities, for ensembles) and logs metrics and a confusion matrix to the model's
MLflow run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mml import tracking
from mml.config import Params
from mml.data.dataset import VideoClips, load_split, stage_caches
from mml.data.sampling import ViewPlan
from mml.distributed import pick_device, set_threads
from mml.fsio import atomic_write, atomic_write_text
from mml.inference import Prediction, predict_dataset
from mml.metrics import confusion_matrix, per_class_accuracy, summarize
from mml.models.factory import model_from_checkpoint


def evaluate_stage(params: Params, stage: str, *, show_progress: bool = True) -> dict:
    """Multi-view test of every model of `stage`; writes metrics, predictions, plots; logs them."""
    cfg = params.stage(stage)
    params = params.for_stage(stage)
    ann = load_split(params.dataset, "val")
    plan = ViewPlan(dense=params.evaluate.dense_views, uniform=params.evaluate.uniform_views)
    paths = [params.paths.checkpoints / stage / f"{k}.pt" for k in range(len(cfg.models))]
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
    report: dict = {"views": str(plan), "fuse": params.evaluate.fuse, "skipped": sorted(skipped)}
    client, _ = tracking.client_and_experiment(params)
    for k, (_, meta) in enumerate(loaded):
        report[str(k)] = _report_model(params, stage, k, meta, predictions[k], ann.classes, client)
    out = params.paths.metrics / f"{stage}.json"
    _write_json(out, report)
    parent = loaded[0][1].get("parent_run_id")
    if parent:
        tracking.log_artifacts(client, parent, [out], "evaluation")
    return report


def _report_model(
    params: Params, stage: str, k: int, meta: dict, pred: Prediction, classes: Sequence[str], client
) -> dict:
    multilabel = bool(meta.get("multilabel"))
    metrics = summarize(pred.scores, pred.targets, multilabel)
    entry: dict = {"modality": meta["modality"], "init": meta.get("init", ""), **metrics}
    npz = params.paths.predictions / stage / f"{k}.npz"
    atomic_write(npz, lambda tmp: _save_npz(tmp, pred, classes, meta["modality"]))
    artifacts = [npz]
    if not multilabel:
        per_class = per_class_accuracy(pred.scores, pred.targets, len(classes))
        entry["per_class_top1"] = {c: _finite(a) for c, a in zip(classes, per_class, strict=True)}
        png = params.paths.plots / stage / "eval" / f"confusion_{k}.png"
        title = f"{stage}.{k} ({meta['modality']}) top-1 {metrics['top1']:.1f}%"
        matrix = confusion_matrix(pred.scores, pred.targets, len(classes))
        plot_confusion(matrix, classes, png, title)
        artifacts.append(png)
    if meta.get("run_id"):
        tracking.log_metrics(client, meta["run_id"], {f"test/{m}": v for m, v in metrics.items()})
        tracking.log_artifacts(client, meta["run_id"], artifacts, "evaluation")
    return entry


def _save_npz(path: Path, pred: Prediction, classes: Sequence[str], modality: str) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(
            f,
            scores=pred.scores,
            targets=pred.targets,
            ids=np.array(pred.ids),
            classes=np.array(list(classes)),
            modality=np.array(modality),
        )


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write_text(path, text)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix as a PNG (written atomically)."""
    import matplotlib

    matrix_norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(5.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(matrix_norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(
        range(len(classes)), [c[:28] for c in classes], rotation=75, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(classes)), [c[:28] for c in classes], fontsize=7)
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
