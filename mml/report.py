"""`mml report`: the paper's orderings and tables for this pipeline, over one or more runs.

The first section tests the paper's orderings (mml/comparisons.py): for each, the paired
difference A - B on the same validation videos with its 95% bootstrap interval over videos and
runs, and a verdict. The tables after it show each model's metrics as mean ± std over the runs
that have it; a stage's method, teacher and peers come from params. Runs (mml/runs.py): this
workspace, other workspaces (`--also DIR`) and DVC experiments (`--exp NAME`).
Writes reports/summary.md, summary.json and comparisons.png and logs them to MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mml import artifacts, tracking, views
from mml.comparisons import BEST_PAIR, COMPARISONS, MARGINS, compare
from mml.config import Params, StageConfig
from mml.fsio import atomic_write, atomic_write_text
from mml.metrics import per_class_accuracy
from mml.runs import Run, collect_runs

SECTIONS = (  # (title, methods) in the paper's order
    ("Single-modality cross-entropy, by initialization (paper Tab. 1)", ("ce",)),
    ("Distillation from a frozen teacher: MARS and D3D (paper Tabs. 2, 6)", ("mars", "d3d")),
    ("Mutual Learning, one modality (paper Tabs. 5, 7)", ("ml",)),
    ("Mutual Modality Learning (paper Tabs. 3, 4, 7, 8)", ("mml",)),
)
TOP5_MIN_CLASSES = 20  # with fewer classes top-5 is mostly chance (6 classes: 83%)
UI_COMMAND = ".venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db"
VERDICT_COLORS = {"holds": "tab:green", "does not hold": "tab:red", "inconclusive": "tab:gray"}


def dataset_facts(params: Params, runs: list[Run]) -> dict:
    """{"metric", "classes", "videos"} of the validation set: the dataset's metric, and the
    sizes from the first predictions found (None when the runs have metrics files only)."""
    facts = {"metric": artifacts.dataset_metric(params.dataset), "classes": None, "videos": None}
    for run in runs:
        for ref in run.refs():
            m = run.member(ref)
            return facts | {"classes": len(m.classes), "videos": len(m.ids)}
    return facts


def metric_keys(facts: dict) -> tuple[str, ...]:
    if facts["metric"] == "mAP":
        return ("mAP",)
    few = facts["classes"] is not None and facts["classes"] < TOP5_MIN_CLASSES
    return ("top1",) if few else ("top1", "top5")


def model_row(
    stage: str, k: int, cfg: StageConfig, runs: list[Run], keys: tuple[str, ...]
) -> dict | None:
    """Model k of `stage`: its metrics as mean (and std) over the runs that have it, or None."""
    entries = [e for run in runs if (e := run.model_metrics(f"{stage}.{k}")) is not None]
    if not entries:
        return None
    spec = cfg.models[k]
    peers = [m.modality for j, m in enumerate(cfg.models) if j != k]
    row = {
        "stage": stage,
        "model": f"{stage}.{k}",
        "method": cfg.method,
        "modality": spec.modality,
        "init": spec.init,
        "peers": ",".join(peers) if cfg.method in ("ml", "mml") else "",
        "teacher": cfg.teacher or "",
        "runs": len(entries),
    }
    for key in keys:
        values = np.array([e[key] for e in entries if key in e], dtype=float)
        if len(values):
            row[key] = round(float(values.mean()), 2)
        if len(values) > 1:
            row[f"{key}_std"] = round(float(values.std(ddof=1)), 2)
    return row


def per_class_rows(params: Params, runs: list[Run]) -> list[dict]:
    """Per-class top-1 of every single-modality CE model from a base init (ImageNet, its
    stand-in `pretrain.<k>`, or scratch: one per modality and stage, what each modality learns
    alone), mean over the runs that have its predictions. Single-label data only."""
    rows = []
    for stage, cfg in params.stages.items():
        if cfg.method != "ce":
            continue
        for k, spec in enumerate(cfg.models):
            if not artifacts.base_init(spec.init):
                continue
            members = [m for run in runs if (m := run.member(f"{stage}.{k}")) is not None]
            if not members or members[0].targets.ndim != 1:
                continue
            classes = members[0].classes
            accs = np.array(
                [per_class_accuracy(m.scores, m.targets, len(classes)) for m in members]
            )
            seen = ~np.isnan(accs)
            mean = np.where(seen, accs, 0).sum(0) / np.maximum(seen.sum(0), 1)
            values = [
                round(float(v), 1) if n else None for v, n in zip(mean, seen.sum(0), strict=True)
            ]
            rows.append(
                {
                    "model": f"{stage}.{k}",
                    "modality": spec.modality,
                    "runs": len(members),
                    "per_class": dict(zip(classes, values, strict=True)),
                }
            )
    return rows


def collect(params: Params, runs: list[Run]) -> dict:
    """Everything summary.json holds: runs, dataset facts, orderings, tables, per-class
    accuracy of each modality, ensembles."""
    facts = dataset_facts(params, runs)
    keys = metric_keys(facts)
    sections = []
    for title, methods in SECTIONS:
        rows = [
            model_row(stage, k, cfg, runs, keys)
            for stage, cfg in params.stages.items()
            if cfg.method in methods
            for k in range(len(cfg.models))
        ]
        sections.append({"title": title, "rows": [r for r in rows if r is not None]})
    candidates = list(params.ensemble.candidates)
    comparisons = [_rounded(compare(c, runs, candidates)) for c in COMPARISONS]
    ensembles = next((e for run in runs if (e := run.ensembles())), {})
    return {
        "runs": [{"name": r.name, "seed": r.seed} for r in runs],
        **facts,
        "keys": keys,
        "comparisons": comparisons,
        "sections": sections,
        "per_class": per_class_rows(params, runs),
        "ensembles": ensembles.get("ensembles", [])[:10],
    }


def _rounded(row: dict) -> dict:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def _signed(x: float) -> str:
    return f"{x:+.1f}".replace("-", "\u2212")


def difference_cell(row: dict) -> str:
    """'+2.3 [−0.4, +5.1]': the paired difference and its 95% interval, in points."""
    return f"{_signed(row['diff'])} [{_signed(row['low'])}, {_signed(row['high'])}]"


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    std = row.get(f"{key}_std")
    return f"{row[key]:.1f} ± {std:.1f}" if std is not None else f"{row[key]:.1f}"


def header(data: dict, dataset: str) -> list[str]:
    runs = ", ".join(
        f"{r['name']} (seed {r['seed'] if r['seed'] is not None else '?'})" for r in data["runs"]
    )
    lines = [
        f"# mml summary: {dataset}",
        "",
        f"Written by `mml report`. {len(data['runs'])} run(s): {runs}.",
        "",
    ]
    seeds = [r["seed"] for r in data["runs"] if r["seed"] is not None]
    shared = sorted({s for s in seeds if seeds.count(s) > 1})
    if shared:
        lines += [
            f"Some runs share a seed ({', '.join(map(str, shared))}): they may repeat "
            "one another rather than vary.",
            "",
        ]
    if data["videos"]:
        lines += [
            f"Validation split, multi-view test: {data['videos']} videos, "
            f"{data['classes']} classes; one video = {100 / data['videos']:.2f} points.",
            "",
        ]
    return lines


def orderings_markdown(data: dict) -> list[str]:
    metric = data["metric"]
    lines = [
        "## The paper's orderings",
        "",
        f"A − B is the paired difference in {metric} points on the same validation videos "
        "(mean over runs); the interval is the 95% bootstrap over runs and videos. "
        '*holds*: the interval is above 0 (for "within 2 points": above −2); '
        "*does not hold*: below it; else *inconclusive*.",
        "",
        f"| ordering | paper | A | control B | A {metric} | B {metric} | "
        "A − B [95% CI] | runs | verdict |",
        "|---" * 9 + "|",
    ]
    chosen = []
    for r in data["comparisons"]:
        a, b = (m if m == BEST_PAIR else f"`{m}`" for m in (r["a"], r["b"]))
        if r["verdict"] == "not run":
            missing = ", ".join(f"`{m}`" for m in r["missing"])
            why = f"no {missing}" if missing else "its models are never in one run"
            cells = [r["name"], r["table"], a, b, "–", "–", "–", "–", f"not run ({why})"]
        else:
            cells = [
                r["name"],
                r["table"],
                a,
                b,
                f"{r['a_value']:.1f}",
                f"{r['b_value']:.1f}",
                difference_cell(r),
                str(len(r["runs"])),
                f"**{r['verdict']}**",
            ]
            for side in ("a_chosen", "b_chosen"):
                picks = zip(r["runs"], r.get(side, []), strict=False)  # absent: no best pair
                chosen += [f"{run}: `{pair}`" for run, pair in picks]
        lines.append("| " + " | ".join(cells) + " |")
    if chosen:
        lines += [
            "",
            f"The {BEST_PAIR}, per run (chosen on the validation videos): "
            + "; ".join(chosen)
            + ".",
        ]
    return lines + [""]


def tables_markdown(data: dict) -> list[str]:
    keys = data["keys"]
    lines = ["Per-model tables: ± is the standard deviation over runs."]
    if data["metric"] == "top1" and "top5" not in keys:
        chance = 500 / data["classes"]
        lines.append(
            f"Top-5 is not shown: with {data['classes']} classes (< {TOP5_MIN_CLASSES}) "
            f"a random guess is in the top 5 {chance:.0f}% of the time."
        )
    lines.append("")
    for section in data["sections"]:
        if not section["rows"]:
            continue
        lines += [
            f"## {section['title']}",
            "",
            "| model | method | modality | init | peers / teacher | "
            + " | ".join(keys)
            + " | runs |",
            "|---" * (6 + len(keys)) + "|",
        ]
        for r in section["rows"]:
            partner = r["peers"] or r["teacher"] or "–"
            cells = [
                f"`{r['model']}`",
                r["method"],
                r["modality"],
                f"`{r['init']}`",
                partner,
                *(_cell(r, k) for k in keys),
                str(r["runs"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def per_class_markdown(data: dict) -> list[str]:
    rows = data.get("per_class") or []
    if not rows:
        return []
    classes = list(rows[0]["per_class"])
    lines = [
        "## Per-class top-1 of each modality alone (CE from ImageNet, its stand-in or scratch), "
        "mean over runs",
        "",
        "| model | modality | " + " | ".join(classes) + " | runs |",
        "|---|---|" + "---|" * (len(classes) + 1),
    ]
    for r in rows:
        cells = [_percent(r["per_class"].get(c)) for c in classes]
        lines.append(
            f"| `{r['model']}` | {r['modality']} | " + " | ".join(cells) + f" | {r['runs']} |"
        )
    return lines + [""]


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def ensembles_markdown(data: dict) -> list[str]:
    keys = data["keys"]
    if not data["ensembles"]:
        return []
    lines = [
        "## Ensembles: probability averaging (paper App. 3), first run",
        "",
        "| members | modalities | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for e in data["ensembles"]:
        cells = [
            " + ".join(f"`{m}`" for m in e["members"]),
            ",".join(e["modalities"]),
            *(f"{e[k]:.1f}" for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def to_markdown(data: dict, dataset: str) -> str:
    return "\n".join(
        header(data, dataset)
        + orderings_markdown(data)
        + tables_markdown(data)
        + per_class_markdown(data)
        + ensembles_markdown(data)
        + links_markdown(data)
    )


def links_markdown(data: dict) -> list[str]:
    """Links to the MLflow UI's runs table filtered to each comparison's model runs."""
    if not data.get("links"):
        return []
    lines = [f"## In the MLflow UI (start it: `{UI_COMMAND}`)", ""]
    lines += [
        f"- [{link['name']}]({link['url']}): {', '.join(link['models'])}" for link in data["links"]
    ]
    return lines + [""]


def plot_comparisons(rows: list[dict], path: Path) -> None:
    """Paired differences with their 95% intervals, one row per comparison that ran, and the
    line each must clear (0, or −2 for "within 2 points"); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ran = [r for r in rows if r["verdict"] != "not run"][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ran) + 1.6))
    for y, r in enumerate(ran):
        color = VERDICT_COLORS[r["verdict"]]
        ax.errorbar(
            r["diff"],
            y,
            xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]],
            fmt="o",
            color=color,
            capsize=3,
        )
        ax.vlines(MARGINS[r["kind"]], y - 0.4, y + 0.4, colors="black", linestyles="--")
    ax.set_yticks(range(len(ran)), [f"{r['name']} ({r['table']})" for r in ran], fontsize=7)
    if not ran:
        ax.text(0.5, 0.5, "no comparison could be run", ha="center", transform=ax.transAxes)
    ax.axvline(0, color="0.6", lw=0.8)
    handles = [Line2D([], [], color=c, marker="o", label=v) for v, c in VERDICT_COLORS.items()]
    handles.append(Line2D([], [], color="black", ls="--", label="A − B must exceed"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xlabel("A − B (points), 95% bootstrap interval")
    ax.set_title("The paper's orderings: paired differences", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_report(
    params: Params,
    out_dir: Path,
    runs: list[Run] | None = None,
    ui_address: str | None = None,
) -> dict:
    """reports/summary.md, summary.json, comparisons.png and figures/ (curves of the paper's
    comparisons from the MLflow runs, the ensemble table), all logged to the report's MLflow
    run; returns the data, with `links`: the UI at `ui_address` filtered to each comparison.
    `runs`: the runs to compare (default: this workspace only)."""
    runs = collect_runs(params) if runs is None else runs
    data = collect(params, runs)
    out_dir = Path(out_dir)
    client, experiment_id = tracking.client_and_experiment(params)
    first = runs[0] if runs else None
    metric = artifacts.dataset_metric(params.dataset)
    figures = views.write_figures(client, first, data, metric, out_dir / "figures")
    address = ui_address or tracking.UI_ADDRESS
    data["links"] = views.links(first, data["comparisons"], experiment_id, address)
    md, js, png = out_dir / "summary.md", out_dir / "summary.json", out_dir / "comparisons.png"
    atomic_write_text(md, to_markdown(data, params.dataset.name))
    atomic_write_text(js, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    plot_comparisons(data["comparisons"], png)

    run_id = tracking.start_step(client, experiment_id, params, tracking.Role.REPORT)
    tracking.log_artifacts(client, run_id, [md, js, png], "report")
    tracking.log_artifacts(client, run_id, figures, "figures")
    tracking.end_run(client, run_id)
    return data
