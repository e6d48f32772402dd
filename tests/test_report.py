"""`mml report` on hand-made runs: the paper's orderings with paired CIs, tables, figure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_pipeline import mml, runner

from mml.artifacts import ModelMetrics, StageMetrics, write_stage_metrics
from mml.cli import app
from mml.comparisons import Comparison, compare
from mml.config import load_params
from mml.metrics import mean_average_precision
from mml.report import metric_keys
from mml.runs import workspace_run

CLASSES = [f"c{i}" for i in range(6)]
VIDEOS = 60
TARGETS = np.arange(VIDEOS) % len(CLASSES)
IDS = [f"v{i:03d}" for i in range(VIDEOS)]

STAGES = {
    "flow_ce_scratch": {"method": "ce", "models": [{"modality": "flow"}]},
    "flow_ce_rgb": {"method": "ce", "models": [{"modality": "flow", "init": "rgb_ml.0"}]},
    "diff_ce_scratch": {"method": "ce", "models": [{"modality": "diff"}]},
    "diff_ce_rgb": {"method": "ce", "models": [{"modality": "diff", "init": "rgb_ml.0"}]},
    "rgb_ml": {"method": "ml", "models": [{"modality": "rgb"}, {"modality": "rgb"}]},
}


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty workspace with params.yaml (seed 0) and its own MLflow store."""
    root = tmp_path / "work"
    root.mkdir()
    params = {"seed": 0, "dataset": {"name": "tiny"}, "stages": STAGES}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return root


def write_predictions(root: Path, ref: str, modality: str, right, reverse: bool = False) -> None:
    """predictions/<stage>/<k>.npz as `mml evaluate` writes it: probability .9 on the target
    for the videos in `right`, else on the next class; in reverse id order if asked."""
    scores = np.full((VIDEOS, len(CLASSES)), 0.02)
    hit = np.isin(np.arange(VIDEOS), list(right))
    scores[np.arange(VIDEOS), np.where(hit, TARGETS, (TARGETS + 1) % len(CLASSES))] = 0.9
    order = np.arange(VIDEOS)[::-1] if reverse else np.arange(VIDEOS)
    stage, k = ref.split(".")
    path = root / "predictions" / stage / f"{k}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        scores=scores[order],
        targets=TARGETS[order],
        ids=np.array(IDS)[order],
        classes=np.array(CLASSES),
        modality=np.array(modality),
    )


@pytest.fixture
def two_runs(workspace, tmp_path) -> tuple[Path, Path]:
    """The workspace (seed 0) and another run's root (seed 1), with the same models except
    that neither has rgb_ce_re (the control of "ML > CE")."""
    other = tmp_path / "seed1"
    other.mkdir()
    (other / "params.yaml").write_text("seed: 1\n")
    # Flow from RGB beats from scratch by 30 of 60 videos (50 points) in both runs;
    # run 2 stores its videos in reverse order (alignment is by id)
    write_predictions(workspace, "flow_ce_rgb.0", "flow", range(0, 50))
    write_predictions(workspace, "flow_ce_scratch.0", "flow", range(0, 20))
    write_predictions(other, "flow_ce_rgb.0", "flow", range(10, 60), reverse=True)
    write_predictions(other, "flow_ce_scratch.0", "flow", range(40, 60))
    for root, right in ((workspace, range(0, 30)), (other, range(15, 45))):
        write_predictions(root, "diff_ce_rgb.0", "diff", right)  # the same answers: a tie
        write_predictions(root, "diff_ce_scratch.0", "diff", right)
        write_predictions(root, "rgb_ml.0", "rgb", range(0, 40))
    return workspace, other


@pytest.mark.slow
def test_orderings_table_with_paired_cis_over_two_runs(two_runs):
    workspace, other = two_runs
    out = mml("report", "--also", str(other))
    assert "2 runs" in out and "1 holds" in out and "1 inconclusive" in out
    md = (workspace / "reports/summary.md").read_text()
    assert f"2 run(s): workspace (seed 0), {other} (seed 1)." in md
    assert "60 videos, 6 classes; one video = 1.67 points." in md
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}
    win = rows["Flow: from RGB > from ImageNet"]
    assert win.startswith(
        "| Flow: from RGB > from ImageNet | Tab. 1 | `flow_ce_rgb.0` | "
        "`flow_ce_scratch.0` | 83.3 | 33.3 | +50.0 [+"
    )
    assert win.endswith("| 2 | **holds** |")
    tie = rows["Diff: from RGB > from ImageNet"]
    assert "| 50.0 | 50.0 | +0.0 [+0.0, +0.0] | 2 | **inconclusive** |" in tie
    assert rows["ML > CE (rgb_ce.0 +6)"].endswith("| not run (no `rgb_ce_re.0`) |")
    data = json.loads((workspace / "reports/summary.json").read_text())
    assert data["runs"] == [{"name": "workspace", "seed": 0}, {"name": str(other), "seed": 1}]
    first = data["comparisons"][0]
    assert (first["diff"], first["videos"], first["runs"]) == (50.0, 60, ["workspace", str(other)])
    # one run alone: d = 1 on 30 of 60 videos, 95% CI ~ 50 +- 1.96 * sqrt(.25 / 60) = +- 12.7
    assert 30 < first["low"] < 45 and 55 < first["high"] < 70
    ml_ce = next(c for c in data["comparisons"] if c["b"] == "rgb_ce_re.0")
    assert ml_ce["verdict"] == "not run" and ml_ce["missing"] == ["rgb_ce_re.0"]


@pytest.mark.slow
def test_best_pair_ensemble_is_chosen_per_run(two_runs):
    workspace, other = two_runs
    write_predictions(workspace, "mml.0", "rgb", range(0, 60))
    write_predictions(other, "mml.0", "rgb", range(0, 60))
    mml("report", "--also", str(other))
    data = json.loads((workspace / "reports/summary.json").read_text())
    row = next(c for c in data["comparisons"] if c["b"] == "best pair ensemble")
    # pairs with distinct modalities among the *other* models (never one holding mml.0): the
    # best is flow_ce_rgb.0 + rgb_ml.0; mml.0, always right, is not 2 points worse than it
    assert row["b_chosen"] == ["flow_ce_rgb.0+rgb_ml.0"] * 2 and row["verdict"] == "holds"
    assert row["a_value"] == 100.0 and row["b_value"] < 100.0
    md = (workspace / "reports/summary.md").read_text()
    assert (
        f"The best pair ensemble, per run (chosen on the validation videos): workspace: "
        f"`flow_ce_rgb.0+rgb_ml.0`; {other}: `flow_ce_rgb.0+rgb_ml.0`."
    ) in md


@pytest.mark.slow
def test_top5_is_dropped_below_20_classes_and_tables_come_from_predictions(two_runs):
    workspace, other = two_runs
    mml("report", "--also", str(other))
    md = (workspace / "reports/summary.md").read_text()
    assert "Top-5 is not shown: with 6 classes (< 20) a random guess is in the top 5 83%" in md
    assert "| model | method | modality | init | peers / teacher | top1 | runs |" in md
    # no metrics files: each row is computed from the predictions, mean ± std over the runs
    assert "| `flow_ce_rgb.0` | ce | flow | `rgb_ml.0` | – | 83.3 ± 0.0 | 2 |" in md
    assert "| `flow_ce_scratch.0` | ce | flow | `scratch` | – | 33.3 ± 0.0 | 2 |" in md
    assert metric_keys({"metric": "top1", "classes": 20}) == ("top1", "top5")
    assert metric_keys({"metric": "top1", "classes": None}) == ("top1", "top5")
    assert metric_keys({"metric": "mAP", "classes": 6}) == ("mAP",)


@pytest.mark.slow
def test_figure_is_written_and_logged_with_the_tables(two_runs):
    workspace, other = two_runs
    mml("report", "--also", str(other))
    png = workspace / "reports/comparisons.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    client = MlflowClient()
    exp = client.get_experiment_by_name("mml-tiny")
    (run,) = client.search_runs([exp.experiment_id], "tags.`mml.role` = 'report'")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert logged == {"report/summary.md", "report/summary.json", "report/comparisons.png"}


@pytest.mark.slow
def test_an_empty_workspace_still_writes_every_output(workspace):
    out = mml("report")
    assert "0 runs" in out and "12 not run" in out
    assert (workspace / "reports/comparisons.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_workspace_given_again_counts_once_and_bad_runs_are_named(two_runs):
    workspace, other = two_runs
    assert "2 runs" in mml("report", "--also", ".", "--also", str(other))
    shutil.copytree(other, workspace / "copy")  # a third run, with seed 1 again
    assert "3 runs" in mml("report", "--also", str(other), "--also", "copy")
    md = (workspace / "reports/summary.md").read_text()
    assert "Some runs share a seed (1): they may repeat one another" in md
    result = runner.invoke(app, ["report", "-q", "--also", "nowhere"])
    assert result.exit_code == 2 and "--also nowhere: no such directory" in result.output
    (workspace / "empty").mkdir()
    result = runner.invoke(app, ["report", "-q", "--also", "empty"])
    assert result.exit_code == 2 and "run 'empty' has no predictions/" in result.output
    result = runner.invoke(app, ["report", "-q", "--exp", "seed-1"])
    assert result.exit_code == 2 and "is not in a DVC repository" in result.output


def test_an_ensemble_is_compared_on_the_videos_all_members_predicted(workspace):
    write_predictions(workspace, "a.0", "rgb", range(0, 30))
    write_predictions(workspace, "b.0", "flow", range(30, 60))
    write_predictions(workspace, "c.0", "rgb", range(0, 20))
    run = workspace_run(load_params("params.yaml"), Path("."))
    # a + b: .9 on the target from one member, .9 on the next class from the other: a tie,
    # broken toward the lower class index -> right on videos whose target < next class
    row = compare(Comparison("ensemble > c", "test", ("a.0", "b.0"), "c.0"), [run])
    expected = np.mean((TARGETS + 1) % len(CLASSES) > TARGETS) * 100 - 20 / 60 * 100
    assert row["diff"] == pytest.approx(expected) and row["runs"] == ["workspace"]


@pytest.mark.slow
def test_tables_from_metrics_directories_average_over_runs(workspace, tmp_path):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["stages"] = {
        "rgb_ce": {"method": "ce", "models": [{"modality": "rgb"}]},
        "flow_rgb": {"method": "ce", "models": [{"modality": "flow", "init": "rgb_ce.0"}]},
        "duo": {
            "method": "mml",
            "models": [
                {"modality": "rgb", "init": "rgb_ce.0"},
                {"modality": "flow", "init": "rgb_ce.0"},
            ],
        },
        "d3d": {"method": "d3d", "teacher": "flow_rgb.0", "models": [{"init": "rgb_ce.0"}]},
    }
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seed1 = tmp_path / "seed1"  # a bare metrics directory: tables only
    for root, shift in ((workspace / "metrics", 0.0), (seed1, 10.0)):
        root.mkdir(parents=True, exist_ok=True)
        for stage, entries in {
            "rgb_ce": [("rgb", "scratch", 60.0)],
            "flow_rgb": [("flow", "rgb_ce.0", 50.0)],
            "duo": [("rgb", "rgb_ce.0", 70.0), ("flow", "rgb_ce.0", 65.0)],
        }.items():
            models = {
                k: ModelMetrics(m, i, {"top1": t + shift, "top5": 99.0})
                for k, (m, i, t) in enumerate(entries)
            }
            write_stage_metrics(root / f"{stage}.json", StageMetrics("", "", [], models))
    out = mml("report", "--also", str(seed1))
    assert "3 models" not in out and "4 models" in out  # d3d has no metrics yet: no row
    md = (workspace / "reports/summary.md").read_text()
    assert "paper Tab. 1" in md and "Mutual Modality Learning" in md and "MARS and D3D" not in md
    # the class count is unknown without predictions: top-5 stays
    assert "| `duo.1` | mml | flow | `rgb_ce.0` | rgb | 70.0 ± 7.1 | 99.0 ± 0.0 | 2 |" in md
    data = json.loads((workspace / "reports/summary.json").read_text())
    ce_rows = data["sections"][0]["rows"]
    assert [r["model"] for r in ce_rows] == ["rgb_ce.0", "flow_rgb.0"]  # the order of params
    assert ce_rows[1]["top1"] == 55.0 and ce_rows[1]["runs"] == 2
    assert data["runs"][1] == {"name": str(seed1), "seed": None}


def test_multilabel_models_are_compared_by_map(workspace):
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 4)) < 0.3).astype(np.int64)
    targets[:4] = np.eye(4, dtype=np.int64)  # every class has a positive
    scores = {"good": 0.7 * targets + 0.3 * rng.random((40, 4)), "bad": rng.random((40, 4))}
    for stage, s in scores.items():
        (workspace / "predictions" / stage).mkdir(parents=True)
        np.savez(
            workspace / "predictions" / stage / "0.npz",
            scores=s,
            targets=targets,
            ids=np.array([f"v{i}" for i in range(40)]),
            classes=np.array(list("abcd")),
            modality=np.array("rgb"),
        )
    run = workspace_run(load_params("params.yaml"), Path("."))
    row = compare(Comparison("good > bad", "test", "good.0", "bad.0"), [run], n_boot=200)
    good, bad = (mean_average_precision(scores[k], targets) for k in ("good", "bad"))
    assert row["metric"] == "mAP" and row["a_value"] == pytest.approx(good) == 100.0
    assert row["diff"] == pytest.approx(good - bad) and row["verdict"] == "holds"


@pytest.mark.slow
def test_per_class_accuracy_of_each_modality_alone(two_runs):
    workspace, other = two_runs
    mml("report", "--also", str(other))
    data = json.loads((workspace / "reports/summary.json").read_text())
    rows = {r["model"]: r for r in data["per_class"]}
    # only CE from scratch: what each modality learns alone; from-RGB and ML models are not here
    assert set(rows) == {"flow_ce_scratch.0", "diff_ce_scratch.0"}
    # flow from scratch: videos 0-19 right in run 1, 40-59 in run 2; class c of 10 videos each
    flow = rows["flow_ce_scratch.0"]
    assert flow["runs"] == 2 and flow["modality"] == "flow"
    expected = [
        100 * (sum(v < 20 for v in range(c, 60, 6)) + sum(v >= 40 for v in range(c, 60, 6))) / 20
        for c in range(6)
    ]
    assert list(flow["per_class"].values()) == pytest.approx(expected)
    md = (workspace / "reports/summary.md").read_text()
    assert (
        "## Per-class top-1 of each modality alone (CE from ImageNet, its stand-in or scratch)"
        in md
    )
    assert "| `flow_ce_scratch.0` | flow | " + " | ".join(f"{e:.0f}" for e in expected) in md


def model_run(client: MlflowClient, experiment_id: str, ref: str, modality: str, values) -> str:
    """A model's MLflow run as training logs it: val/top1 at steps 0, 1, ..."""
    run_id = client.create_run(
        experiment_id, run_name=f"{ref}-{modality}", tags={"mml.role": "model"}
    ).info.run_id
    for step, value in enumerate(values):
        client.log_metric(run_id, "val/top1", value, step=step)
    client.set_terminated(run_id)
    return run_id


@pytest.mark.slow
def test_the_report_run_holds_curves_from_the_model_runs_and_links_filter_to_them(two_runs):
    workspace, _ = two_runs
    client = MlflowClient()
    experiment_id = client.create_experiment("mml-tiny")
    curves = {"flow_ce_rgb.0": [30.0, 55.0, 70.0], "flow_ce_scratch.0": [20.0, 25.0, 40.0]}
    ids = {}
    for ref, values in curves.items():
        ids[ref] = model_run(client, experiment_id, ref, "flow", values)
        stage = ref.split(".")[0]
        scores = {"top1": values[-1], "top5": 99.0}
        write_stage_metrics(
            workspace / "metrics" / f"{stage}.json",
            StageMetrics(
                "Dense 1", "probs", [], {0: ModelMetrics("flow", "", scores, None, ids[ref])}
            ),
        )
    model_run(client, experiment_id, "rgb_ml.0", "rgb", [50.0])  # a run no comparison names

    out = mml("report", "--ui", "http://127.0.0.1:5999")
    (report,) = client.search_runs([experiment_id], "tags.`mml.role` = 'report'")
    logged = {a.path for a in client.list_artifacts(report.info.run_id, "figures")}
    names = {"init.png", "methods.png", "ensembles.png", "curves.json"}
    assert logged == {f"figures/{n}" for n in names}
    local = Path(client.download_artifacts(report.info.run_id, "figures", str(workspace / "dl")))
    for name in names - {"curves.json"}:
        png = (local / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert png == (workspace / "reports/figures" / name).read_bytes()
    shown = json.loads((local / "curves.json").read_text())
    assert shown["metric"] == "val/top1" and shown["methods"] == {}  # no RGB model has metrics
    assert shown["init"] == {
        ref: {"run_id": ids[ref], "points": [[step + 1, v] for step, v in enumerate(values)]}
        for ref, values in curves.items()
    }

    links = json.loads((workspace / "reports/summary.json").read_text())["links"]
    by_name = {link["name"]: link for link in links}
    flow = by_name["Flow: from RGB > from ImageNet"]
    assert flow["models"] == ["flow_ce_rgb.0", "flow_ce_scratch.0"]
    assert flow["url"] in out and flow["url"] in (workspace / "reports/summary.md").read_text()
    base, query = flow["url"].split("?")
    assert base == f"http://127.0.0.1:5999/#/experiments/{experiment_id}/runs"
    fields = dict(parse_qsl(query))
    assert fields["orderByKey"] == "tags.`mlflow.runName`"  # not creation time: listed flat
    found = client.search_runs([experiment_id], fields["searchFilter"])
    assert sorted(r.info.run_name for r in found) == [
        "flow_ce_rgb.0-flow",
        "flow_ce_scratch.0-flow",
    ]
