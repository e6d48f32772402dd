"""`mml report`: the synthetic analogues of the paper's tables, written from the metrics files.

Rows come from metrics/<stage>.json (one per model, as `mml evaluate` wrote them) and
metrics/ensembles.json; the stage's method, teacher and peers come from params. Metrics
directories of other runs of the same pipeline (e.g. other seeds) can be added: each row then
shows the mean over the runs that have it and their count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mml.config import Params
from mml.fsio import atomic_write_text

SECTIONS = (  # (title, methods) in the paper's order
    ("Single-modality cross-entropy, by initialization (paper Tab. 1)", ("ce",)),
    ("Distillation from a frozen teacher: MARS and D3D (paper Tabs. 2, 6)", ("mars", "d3d")),
    ("Mutual Learning, one modality (paper Tabs. 5, 7)", ("ml",)),
    ("Mutual Modality Learning (paper Tabs. 3, 4, 7, 8)", ("mml",)),
)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(params: Params, metrics_dirs: list[Path]) -> dict:
    """{"sections": [{"title", "rows": [...]}], "ensembles": [...], "metric": "top1"|"mAP"}."""
    sections, metric = [], "top1"
    for title, methods in SECTIONS:
        rows = []
        for stage, cfg in params.stages.items():
            if cfg.method not in methods:
                continue
            runs = [_read(Path(d) / f"{stage}.json") for d in metrics_dirs]
            runs = [r for r in runs if r is not None]
            for k, spec in enumerate(cfg.models):
                entries = [r[str(k)] for r in runs if str(k) in r]
                if not entries:
                    continue
                metric = "mAP" if "mAP" in entries[0] else "top1"
                keys = ("mAP",) if metric == "mAP" else ("top1", "top5")
                peers = [m.modality for j, m in enumerate(cfg.models) if j != k]
                row = {"stage": stage, "model": f"{stage}.{k}", "method": cfg.method,
                       "modality": spec.modality, "init": spec.init,
                       "peers": ",".join(peers) if cfg.method in ("ml", "mml") else "",
                       "teacher": cfg.teacher or "", "seeds": len(entries)}  # fmt: skip
                for key in keys:
                    values = np.array([e[key] for e in entries], dtype=float)
                    row[key] = round(float(values.mean()), 2)
                    if len(values) > 1:
                        row[f"{key}_std"] = round(float(values.std(ddof=1)), 2)
                rows.append(row)
        sections.append({"title": title, "rows": rows})
    ensembles = _read(Path(metrics_dirs[0]) / "ensembles.json") or {}
    return {"metric": metric, "sections": sections,
            "ensembles": ensembles.get("ensembles", [])[:10]}  # fmt: skip


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    std = row.get(f"{key}_std")
    return f"{row[key]:.1f} ± {std:.1f}" if std is not None else f"{row[key]:.1f}"


def to_markdown(data: dict, dataset: str) -> str:
    keys = ("mAP",) if data["metric"] == "mAP" else ("top1", "top5")
    lines = [f"# mml summary: {dataset}", "",
             "Written by `mml report` from the metrics files; validation split, multi-view test. "
             "± is the standard deviation over seeds.", ""]  # fmt: skip
    for section in data["sections"]:
        if not section["rows"]:
            continue
        lines += [f"## {section['title']}", ""]
        lines.append("| model | method | modality | init | peers / teacher | "
                     + " | ".join(keys) + " | seeds |")  # fmt: skip
        lines.append("|---" * (6 + len(keys)) + "|")
        for r in section["rows"]:
            partner = r["peers"] or r["teacher"] or "–"
            cells = [f"`{r['model']}`", r["method"], r["modality"], f"`{r['init']}`", partner,
                     *(_cell(r, k) for k in keys), str(r["seeds"])]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if data["ensembles"]:
        lines += ["## Ensembles: probability averaging (paper App. 3)", "",
                  "| members | modalities | " + " | ".join(keys) + " |",
                  "|---|---|" + "---|" * len(keys)]  # fmt: skip
        for e in data["ensembles"]:
            cells = [" + ".join(f"`{m}`" for m in e["members"]), ",".join(e["modalities"]),
                     *(f"{e[k]:.1f}" for k in keys)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(params: Params, out_dir: Path, extra_metrics: list[Path] = ()) -> dict:
    """reports/summary.md and summary.json (logged to MLflow); returns the data."""
    data = collect(params, [params.paths.metrics, *extra_metrics])
    out_dir = Path(out_dir)
    md, js = out_dir / "summary.md", out_dir / "summary.json"
    atomic_write_text(md, to_markdown(data, params.dataset.name))
    atomic_write_text(js, json.dumps(data, indent=2) + "\n")
    from mml import tracking

    client, experiment_id = tracking.client_and_experiment(params)
    tags = {"stage": "report", "method": "report", "dataset": params.dataset.name,
            "git_commit": tracking.git_commit(), "mml.role": "report"}  # fmt: skip
    run_id = client.create_run(experiment_id, run_name="report", tags=tags).info.run_id
    tracking.log_artifacts(client, run_id, [md, js], "report")
    tracking.end_run(client, run_id)
    return data
