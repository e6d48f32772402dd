"""Ensembles: average the class probabilities of models of different stages (paper App. 3).

`run_ensembles` reads the validation predictions that `mml evaluate` wrote
(predictions/<stage>/<k>.npz) of `ensemble.candidates` (empty: every evaluated model), scores
every combination of the sizes in `ensemble.sizes` (one model per modality unless told
otherwise), ranks them, runs a greedy forward selection, and writes metrics/ensembles.json,
the paper Tab. 13 style table metrics/ensembles.md and plots/ensembles.png; all three are
logged to an MLflow run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from mml import artifacts, tracking
from mml.artifacts import Predictions
from mml.config import ConfigError, Params
from mml.fsio import atomic_write, atomic_write_text
from mml.metrics import summarize


def combine(members: list[Predictions]) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities over the videos every member predicted (aligned by id)."""
    together = average(members)
    return together.scores, together.targets


def average(members: list[Predictions]) -> Predictions:
    """The ensemble of `members` as one Predictions: mean probabilities on the videos all
    predicted, in sorted id order; its ref joins theirs with '+'."""
    classes = {m.classes for m in members}
    if len(classes) > 1:
        raise ConfigError(f"{[m.ref for m in members]} were trained on different class lists")
    order = sorted(set(members[0].ids).intersection(*(m.ids for m in members[1:])))
    positions = [{video: row for row, video in enumerate(m.ids)} for m in members]
    rows = [np.array([p[i] for i in order], dtype=np.int64) for p in positions]
    scores = np.mean([m.scores[r] for m, r in zip(members, rows, strict=True)], axis=0)
    ref, modality = "+".join(m.ref for m in members), "+".join(m.modality for m in members)
    targets = members[0].targets[rows[0]]
    return Predictions(ref, modality, scores, targets, tuple(order), members[0].classes)


def score_combinations(
    members: list[Predictions], sizes: tuple[int, ...], distinct_modalities: bool, multilabel: bool
) -> list[dict]:
    """Every allowed combination of `members` of each size, with its metrics (unranked)."""
    results = []
    for size in sorted(set(sizes)):
        for group in itertools.combinations(members, size):
            modalities = [m.modality for m in group]
            if distinct_modalities and len(set(modalities)) < size:
                continue
            scores, targets = combine(list(group))
            metrics = summarize(scores, targets, multilabel)
            results.append(
                {
                    "members": [m.ref for m in group],
                    "modalities": modalities,
                    "videos": len(targets),
                    **metrics,
                }
            )
    return results


def greedy_selection(
    members: list[Predictions], key: str, multilabel: bool, distinct_modalities: bool, max_size: int
) -> list[dict]:
    """Greedy forward selection: the best single model, then the best addition while it helps.

    Each step adds the member whose addition gives the best ensemble `key` (ties: the smaller
    ref); selection stops when no addition strictly improves it or at `max_size` members.
    Returns the steps: {"members", "added", <metrics>}, the first being the best single model.
    """
    steps: list[dict] = []
    chosen: list[Predictions] = []
    while len(chosen) < max_size:
        taken, used = {m.ref for m in chosen}, {m.modality for m in chosen}
        options = [m for m in members if m.ref not in taken]
        if distinct_modalities:
            options = [m for m in options if m.modality not in used]
        if not options:
            break
        trials = [(summarize(*combine([*chosen, m]), multilabel), m) for m in options]
        metrics, best = min(trials, key=lambda t: (-t[0][key], t[1].ref))
        if steps and metrics[key] <= steps[-1][key]:
            break
        chosen.append(best)
        steps.append({"members": [m.ref for m in chosen], "added": best.ref, **metrics})
    return steps


def run_ensembles(params: Params) -> dict:
    """Score, rank and report every allowed combination; returns the metrics/ensembles.json data."""
    cfg, predictions = params.ensemble, params.paths.predictions
    refs = list(cfg.candidates) or artifacts.predicted_refs(
        predictions.glob(artifacts.predictions_glob())
    )
    if len(refs) < 2:
        where = (
            f"ensemble.candidates lists {refs}"
            if cfg.candidates
            else f"ensemble.candidates is empty (every evaluated model) and {predictions} holds "
            f"{refs or 'none'}"
        )
        raise ConfigError(
            f"{params.source}: an ensemble needs at least two models, but {where}; "
            "run `mml evaluate STAGE` first for the stages to combine."
        )
    members = [artifacts.load_predictions(predictions, ref) for ref in refs]
    key = artifacts.dataset_metric(params.dataset)
    multilabel = key == "mAP"
    if any(m.metric != key for m in members):
        raise ConfigError(
            f"{[m.ref for m in members if m.metric != key]}: predictions of another kind of "
            f"dataset than {params.source}'s dataset ({params.dataset.format})"
        )
    singles = {
        m.ref: {"modality": m.modality, **summarize(m.scores, m.targets, multilabel)}
        for m in members
    }
    results = score_combinations(members, cfg.sizes, cfg.distinct_modalities, multilabel)
    if not results:
        raise ConfigError(
            f"{params.source}: no ensemble of sizes {list(cfg.sizes)} from {refs}"
            + (" with distinct modalities" if cfg.distinct_modalities else "")
        )
    results.sort(key=lambda r: (-r[key], r["members"]))
    greedy = greedy_selection(members, key, multilabel, cfg.distinct_modalities, max(cfg.sizes))
    report = {
        "fuse": "probs",
        "metric": key,
        "best": results[0],
        "singles": singles,
        "ensembles": results,
        "greedy": greedy,
        "greedy_best": greedy[-1],
    }
    out = artifacts.metrics_path(params.paths.metrics, artifacts.ENSEMBLES)
    md = out.with_suffix(".md")
    artifacts.write_json(out, report)
    atomic_write_text(md, ensembles_markdown(report))
    png = params.paths.plots / "ensembles.png"
    plot_ranking(results[:12], singles, key, png)
    _track(params, refs, report, [out, md, png])
    return report


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def ensembles_markdown(report: dict) -> str:
    """Paper Tab. 13 style: single models, ranked ensembles with their gain, the greedy path."""
    key, singles = report["metric"], report["singles"]
    cols = ["mAP"] if key == "mAP" else ["top1", "top5"]

    def metrics(row: dict) -> list[str]:
        return [f"{row[c]:.2f}" for c in cols]

    def names(refs: list[str]) -> str:
        return " + ".join(f"`{r}`" for r in refs)

    lines = [
        "# Ensembles: probability averaging (paper App. 3, Tab. 13)",
        "",
        f"Validation split; ranked by {key}; gains are in points.",
        "",
        "## Single models",
        "",
        _row(["model", "modality", *cols]),
        "|---|---|" + "---|" * len(cols),
    ]
    for ref, s in sorted(singles.items(), key=lambda item: (-item[1][key], item[0])):
        lines.append(_row([f"`{ref}`", s["modality"], *metrics(s)]))
    lines += [
        "",
        "## Ensembles",
        "",
        _row(["rank", "members", "modalities", *cols, "gain over best member"]),
        "|---|---|---|" + "---|" * len(cols) + "---|",
    ]
    for rank, e in enumerate(report["ensembles"], 1):
        gain = e[key] - max(singles[m][key] for m in e["members"])
        cells = [str(rank), names(e["members"]), " + ".join(e["modalities"]), *metrics(e)]
        lines.append(_row([*cells, f"{gain:+.2f}"]))
    lines += [
        "",
        "## Greedy forward selection",
        "",
        _row(["step", "added", "members", *cols, "gain over previous step"]),
        "|---|---|---|" + "---|" * len(cols) + "---|",
    ]
    for i, step in enumerate(report["greedy"]):
        gain = f"{step[key] - report['greedy'][i - 1][key]:+.2f}" if i else "–"
        cells = [str(i + 1), f"`{step['added']}`", names(step["members"]), *metrics(step)]
        lines.append(_row([*cells, gain]))
    return "\n".join(lines) + "\n"


def plot_ranking(results: list[dict], singles: dict, key: str, path: Path) -> None:
    """Horizontal bars: the best ensembles, with the best single model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(results) + 1.5))
    labels = [" + ".join(r["members"]) for r in results][::-1]
    ax.barh(labels, [r[key] for r in results][::-1], color="tab:blue")
    best_single = max(singles.items(), key=lambda item: item[1][key])
    ax.axvline(
        best_single[1][key],
        color="tab:red",
        ls="--",
        label=f"best single: {best_single[0]} {best_single[1][key]:.1f}",
    )
    ax.set_xlabel(f"{key} (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _track(params: Params, refs: list[str], report: dict, artifacts: list[Path]) -> None:

    client, experiment_id = tracking.client_and_experiment(params)
    run_id = tracking.start_step(client, experiment_id, params, tracking.Role.ENSEMBLE)
    cfg = params.ensemble
    tracking.log_params(
        client, run_id, {"ensemble.candidates": ",".join(refs), "ensemble.sizes": list(cfg.sizes)}
    )
    best, greedy, key = report["best"], report["greedy_best"], report["metric"]
    tracking.log_metrics(client, run_id, {f"best/{key}": best[key], f"greedy/{key}": greedy[key]})
    client.set_tag(run_id, tracking.Tag.BEST_MEMBERS, ",".join(best["members"]))
    client.set_tag(run_id, tracking.Tag.GREEDY_MEMBERS, ",".join(greedy["members"]))
    tracking.log_artifacts(client, run_id, artifacts, "ensemble")
    tracking.end_run(client, run_id)
