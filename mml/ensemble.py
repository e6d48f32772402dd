"""Ensembles: average the class probabilities of models of different stages (paper App. 3).

`run_ensembles` reads the validation predictions that `mml evaluate` wrote
(predictions/<stage>/<k>.npz), scores every combination of `ensemble.candidates` of the sizes
in `ensemble.sizes` (one model per modality unless told otherwise), ranks them, and writes
metrics/ensembles.json and plots/ensembles.png; both are logged to an MLflow run.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mml.config import ConfigError, Params
from mml.evaluate import summarize
from mml.fsio import atomic_write, atomic_write_text


@dataclass(frozen=True)
class Member:
    """One candidate's validation predictions."""

    ref: str
    modality: str
    scores: np.ndarray  # (videos, classes) probabilities
    targets: np.ndarray
    ids: tuple[str, ...]
    classes: tuple[str, ...]


def load_member(predictions: Path, ref: str) -> Member:
    stage, k = ref.rsplit(".", 1)
    path = Path(predictions) / stage / f"{k}.npz"
    if not path.exists():
        raise ConfigError(
            f"ensemble candidate {ref!r}: {path} is missing; run `mml evaluate {stage}`."
        )
    with np.load(path) as npz:
        modality = str(npz["modality"]) if "modality" in npz else "?"
        return Member(ref, modality, npz["scores"], npz["targets"],
                      tuple(npz["ids"].tolist()), tuple(npz["classes"].tolist()))  # fmt: skip


def combine(members: list[Member]) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities over the videos every member predicted (aligned by id)."""
    classes = {m.classes for m in members}
    if len(classes) > 1:
        raise ConfigError(f"{[m.ref for m in members]} were trained on different class lists")
    common = set(members[0].ids).intersection(*(m.ids for m in members[1:]))
    order = sorted(common)
    positions = [{video: row for row, video in enumerate(m.ids)} for m in members]
    rows = [np.array([p[i] for i in order], dtype=np.int64) for p in positions]
    scores = np.mean([m.scores[r] for m, r in zip(members, rows, strict=True)], axis=0)
    return scores, members[0].targets[rows[0]]


def run_ensembles(params: Params) -> dict:
    """Score, rank and report every allowed combination; returns the metrics/ensembles.json data."""
    cfg = params.ensemble
    if len(cfg.candidates) < 2:
        raise ConfigError(f"{params.source}: ensemble.candidates needs at least two models.")
    members = [load_member(params.paths.predictions, ref) for ref in cfg.candidates]
    multilabel = members[0].targets.ndim == 2
    key = "mAP" if multilabel else "top1"
    singles = {m.ref: {"modality": m.modality, **summarize(m.scores, m.targets, multilabel)}
               for m in members}  # fmt: skip
    results = []
    for size in sorted(set(cfg.sizes)):
        for group in itertools.combinations(members, size):
            modalities = [m.modality for m in group]
            if cfg.distinct_modalities and len(set(modalities)) < size:
                continue
            scores, targets = combine(list(group))
            results.append(
                {
                    "members": [m.ref for m in group],
                    "modalities": modalities,
                    "videos": len(targets),
                    **summarize(scores, targets, multilabel),
                }
            )
    if not results:
        raise ConfigError(
            f"{params.source}: no ensemble of sizes {list(cfg.sizes)} from {list(cfg.candidates)}"
            + (" with distinct modalities" if cfg.distinct_modalities else "")
        )
    results.sort(key=lambda r: (-r[key], r["members"]))
    report = {"fuse": "probs", "metric": key, "best": results[0], "singles": singles,
              "ensembles": results}  # fmt: skip
    out = params.paths.metrics / "ensembles.json"
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    png = params.paths.plots / "ensembles.png"
    plot_ranking(results[:12], singles, key, png)
    _track(params, report, [out, png])
    return report


def plot_ranking(results: list[dict], singles: dict, key: str, path: Path) -> None:
    """Horizontal bars: the best ensembles, with the best single model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(results) + 1.5))
    labels = [" + ".join(r["members"]) for r in results][::-1]
    ax.barh(labels, [r[key] for r in results][::-1], color="tab:blue")
    best_single = max(singles.items(), key=lambda item: item[1][key])
    ax.axvline(best_single[1][key], color="tab:red", ls="--",
               label=f"best single: {best_single[0]} {best_single[1][key]:.1f}")  # fmt: skip
    ax.set_xlabel(f"{key} (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _track(params: Params, report: dict, artifacts: list[Path]) -> None:
    from mml import tracking

    client, experiment_id = tracking.client_and_experiment(params)
    tags = {"stage": "ensemble", "method": "ensemble", "dataset": params.dataset.name,
            "git_commit": tracking.git_commit(), "mml.role": "ensemble"}  # fmt: skip
    run = client.create_run(experiment_id, run_name="ensemble", tags=tags)
    run_id = run.info.run_id
    cfg = params.ensemble
    tracking.log_params(client, run_id, {"ensemble.candidates": ",".join(cfg.candidates),
                                         "ensemble.sizes": list(cfg.sizes)})  # fmt: skip
    best = report["best"]
    tracking.log_metrics(client, run_id, {f"best/{report['metric']}": best[report["metric"]]})
    client.set_tag(run_id, "best_members", ",".join(best["members"]))
    tracking.log_artifacts(client, run_id, artifacts, "ensemble")
    tracking.end_run(client, run_id)
