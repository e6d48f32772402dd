"""The report as a person sees it in the MLflow UI: figures drawn from the runs, and links.

- Figures of the paper's comparisons (`comparisons.CURVES`): each model's validation metric per
  epoch, read back from the MLflow run that trained the workspace's checkpoint of it (the run
  `metrics/<stage>.json` names), and the ensemble table. `mml report` logs them to its report
  run under `figures/`.
- Links: for each comparison, the experiment's runs table filtered to exactly the model runs it
  compares (`tracking.runs_table_url`), so the UI opens on them with no clicks.

Only the report's first run (the workspace, unless `--no-workspace`) is drawn and linked: the
other runs of a multi-seed report live in other stores or in DVC experiments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mml import tracking
from mml.artifacts import split_ref
from mml.comparisons import COMPARISONS, CURVES, CurveFigure, refs
from mml.fsio import atomic_write, atomic_write_text
from mml.runs import Run

CURVE_COLORS = ("C3", "C0", "C2", "C1", "C4", "C5", "C6")


def model_runs(run: Run | None, models: Sequence[str]) -> dict[str, str]:
    """ref -> id of the MLflow run that trained it, for the `models` that `run` tested."""
    found = {}
    for ref in models if run is not None else ():
        stage, k = split_ref(ref)
        metrics = run.stage_metrics(stage)
        entry = metrics.models.get(k) if metrics else None
        if entry is not None and entry.run_id:
            found[ref] = entry.run_id
    return found


def histories(client: MlflowClient, run_ids: dict[str, str], key: str) -> dict[str, list]:
    """ref -> [(epoch, value), ...] of metric `key` as each model's run logged it."""
    found = {}
    for ref, run_id in run_ids.items():
        try:
            points = client.get_metric_history(run_id, key)
        except MlflowException:  # the run lives in another store (a copied workspace)
            continue
        if points:
            found[ref] = sorted((p.step + 1, p.value) for p in points)
    return found


def plot_curves(figure: CurveFigure, curves: dict[str, list], metric: str, path: Path) -> None:
    """One panel per group of `figure`, a line per model it has; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = figure.panels
    width = max(8.0, 5.2 * len(panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.8), squeeze=False)
    for ax, (title, group) in zip(axes[0], panels, strict=True):
        shown = [ref for ref in group if ref in curves]
        for color, ref in zip(CURVE_COLORS, shown, strict=False):
            epochs, values = zip(*curves[ref], strict=True)
            ax.plot(epochs, values, marker="o", ms=3, color=color, label=ref)
        if shown:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"validation {metric} (single view, %)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{figure.title} ({figure.table})", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def plot_ensemble_table(ensembles: list[dict], keys: Sequence[str], path: Path) -> None:
    """The report's ensemble table (members, modalities, metrics) as a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        [" + ".join(e["members"]), ",".join(e["modalities"]), *(f"{e[k]:.1f}" for k in keys)]
        for e in ensembles
    ] or [["no ensemble", "", *("" for _ in keys)]]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 0.8))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["members", "modalities", *keys], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(keys) + 2)))
    ax.set_title("Ensembles: probability averaging (paper App. 3), ranked", fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def write_figures(
    client: MlflowClient, run: Run | None, data: dict, metric: str, out_dir: Path
) -> list[Path]:
    """Under `out_dir`: <name>.png of every curve figure, ensembles.png, and curves.json (what
    the curves show: per figure, per model, its run id and [epoch, value] points)."""
    out_dir = Path(out_dir)
    written, shown = [], {}
    for figure in CURVES:
        ids = model_runs(run, figure.refs)
        curves = histories(client, ids, f"val/{metric}")
        path = out_dir / f"{figure.name}.png"
        plot_curves(figure, curves, metric, path)
        written.append(path)
        shown[figure.name] = {
            ref: {"run_id": ids[ref], "points": [list(p) for p in points]}
            for ref, points in curves.items()
        }
    table = out_dir / "ensembles.png"
    plot_ensemble_table(data["ensembles"], data["keys"], table)
    data_file = out_dir / "curves.json"
    atomic_write_text(data_file, json.dumps({"metric": f"val/{metric}", **shown}, indent=1) + "\n")
    return [*written, table, data_file]


def links(run: Run | None, rows: list[dict], experiment_id: str, address: str) -> list[dict]:
    """For each comparison that ran, and each curve figure: its name and the URL of the runs
    table filtered to exactly its model runs."""
    found = []
    named = {c.name: [*refs(c.a), *refs(c.b)] for c in COMPARISONS}
    for row in rows:
        if row["verdict"] == "not run":
            continue
        ids = model_runs(run, named.get(row["name"], []))
        if ids:
            found.append(_link(row["name"], ids, experiment_id, address))
    for figure in CURVES:
        ids = model_runs(run, figure.refs)
        if ids:
            found.append(_link(f"curves: {figure.title}", ids, experiment_id, address))
    return found


def _link(name: str, ids: dict[str, str], experiment_id: str, address: str) -> dict:
    url = tracking.runs_table_url(address, experiment_id, tracking.runs_filter(ids.values()))
    return {"name": name, "models": sorted(ids), "url": url}
