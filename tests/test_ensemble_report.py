"""Ensembles and the summary report, on hand-made prediction and metrics files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_pipeline import mml, runner

from mml.cli import app
from mml.ensemble import combine, load_member

CLASSES = np.array(["a", "b", "c"])
TARGETS = np.array([0, 1, 2, 0])


def write_npz(root, ref: str, modality: str, scores, ids=("1", "2", "3", "4"), targets=TARGETS):
    stage, k = ref.split(".")
    path = root / "predictions" / stage / f"{k}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=np.array(scores, dtype=float), targets=np.array(targets),
             ids=np.array(ids), classes=CLASSES, modality=np.array(modality))  # fmt: skip


@pytest.fixture
def predictions(project):
    # rgb_a: right on videos 1, 2; flow_b: right on 3, 4 (stored in another video order)
    write_npz(
        project,
        "rgb_a.0",
        "rgb",
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]],
    )
    flow = {
        "1": [0.3, 0.4, 0.3],
        "2": [0.4, 0.35, 0.25],
        "3": [0.1, 0.1, 0.8],
        "4": [0.9, 0.05, 0.05],
    }
    order = ["4", "3", "2", "1"]
    write_npz(project, "flow_b.0", "flow", [flow[i] for i in order], ids=order,
              targets=[TARGETS[int(i) - 1] for i in order])  # fmt: skip
    write_npz(project, "rgb_c.0", "rgb", [[0.1, 0.1, 0.8]] * 4)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ensemble"] = {"candidates": ["rgb_a.0", "flow_b.0", "rgb_c.0"], "sizes": [2, 3]}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def test_combine_aligns_videos_by_id_and_averages_probabilities(predictions):
    a = load_member(predictions / "predictions", "rgb_a.0")
    b = load_member(predictions / "predictions", "flow_b.0")
    scores, targets = combine([a, b])
    assert targets.tolist() == [0, 1, 2, 0]
    assert scores[0] == pytest.approx([0.45, 0.35, 0.2])  # video "1": (.6+.3)/2, ...
    assert scores[3] == pytest.approx([0.55, 0.275, 0.175])


def test_ensemble_ranks_pairs_with_distinct_modalities(predictions):
    out = mml("ensemble")
    assert "best rgb_a.0 + flow_b.0" in out
    report = json.loads((predictions / "metrics/ensembles.json").read_text())
    pairs = [e["members"] for e in report["ensembles"]]
    # rgb_a + rgb_c share a modality, so does every triple: two pairs remain
    assert pairs == [["rgb_a.0", "flow_b.0"], ["flow_b.0", "rgb_c.0"]]
    # rgb_a + flow_b: video 1 -> a, 2 -> (.2+.4)/2 vs (.7+.35)/2: b, 3 -> c, 4 -> a: 100 %
    assert report["best"]["top1"] == 100.0 and report["best"]["videos"] == 4
    assert report["singles"]["rgb_a.0"]["top1"] == 50.0
    assert (predictions / "plots/ensembles.png").stat().st_size > 1000
    client = MlflowClient()
    exp = client.get_experiment_by_name("mml-tiny")
    (run,) = client.search_runs([exp.experiment_id], "tags.`mml.role` = 'ensemble'")
    assert run.data.tags["best_members"] == "rgb_a.0,flow_b.0"
    assert run.data.metrics["best/top1"] == 100.0


def test_ensemble_names_a_missing_candidate(predictions):
    (predictions / "predictions/flow_b/0.npz").unlink()
    result = runner.invoke(app, ["ensemble", "-q"])
    assert result.exit_code == 2 and "run `mml evaluate flow_b`" in result.output


def test_report_tables_from_metrics_files_with_seed_aggregation(project, tmp_path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["stages"] = {
        "rgb_ce": {"method": "ce", "models": [{"modality": "rgb"}]},
        "flow_rgb": {"method": "ce", "models": [{"modality": "flow", "init": "rgb_ce.0"}]},
        "duo": {"method": "mml", "models": [{"modality": "rgb", "init": "rgb_ce.0"},
                                             {"modality": "flow", "init": "rgb_ce.0"}]},
        "d3d": {"method": "d3d", "teacher": "flow_rgb.0", "models": [{"init": "rgb_ce.0"}]},
    }  # fmt: skip
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seed1 = tmp_path / "seed1"
    for root, shift in ((project / "metrics", 0.0), (seed1, 10.0)):
        root.mkdir(parents=True, exist_ok=True)
        for stage, entries in {
            "rgb_ce": [("rgb", "scratch", 60.0)],
            "flow_rgb": [("flow", "rgb_ce.0", 50.0)],
            "duo": [("rgb", "rgb_ce.0", 70.0), ("flow", "rgb_ce.0", 65.0)],
        }.items():
            data = {str(k): {"modality": m, "init": i, "top1": t + shift, "top5": 99.0}
                    for k, (m, i, t) in enumerate(entries)}  # fmt: skip
            (root / f"{stage}.json").write_text(json.dumps(data))
    out = mml("report", "--also", str(seed1))
    assert "3 models" not in out and "4 models" in out  # d3d has no metrics yet: no row
    md = (project / "reports/summary.md").read_text()
    assert "paper Tab. 1" in md and "Mutual Modality Learning" in md and "MARS" not in md
    assert "| `duo.1` | mml | flow | `rgb_ce.0` | rgb | 70.0 ± 7.1 | 99.0 ± 0.0 | 2 |" in md
    data = json.loads((project / "reports/summary.json").read_text())
    ce_rows = data["sections"][0]["rows"]
    assert [r["model"] for r in ce_rows] == ["rgb_ce.0", "flow_rgb.0"]  # the order of params
    assert ce_rows[1]["top1"] == 55.0 and ce_rows[1]["seeds"] == 2
