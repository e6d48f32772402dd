"""Ensembles, on hand-made prediction files (the report: tests/test_report.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_pipeline import mml, runner

from mml.artifacts import Predictions, load_predictions, predicted_refs, predictions_glob
from mml.cli import app
from mml.ensemble import combine, greedy_selection

CLASSES = np.array(["a", "b", "c"])
TARGETS = np.array([0, 1, 2, 0])


def write_npz(root, ref: str, modality: str, scores, ids=("1", "2", "3", "4"), targets=TARGETS):
    stage, k = ref.split(".")
    path = root / "predictions" / stage / f"{k}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        scores=np.array(scores, dtype=float),
        targets=np.array(targets),
        ids=np.array(ids),
        classes=CLASSES,
        modality=np.array(modality),
    )


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
    write_npz(
        project,
        "flow_b.0",
        "flow",
        [flow[i] for i in order],
        ids=order,
        targets=[TARGETS[int(i) - 1] for i in order],
    )
    write_npz(project, "rgb_c.0", "rgb", [[0.1, 0.1, 0.8]] * 4)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ensemble"] = {"candidates": ["rgb_a.0", "flow_b.0", "rgb_c.0"], "sizes": [2, 3]}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def test_combine_aligns_videos_by_id_and_averages_probabilities(predictions):
    a = load_predictions(predictions / "predictions", "rgb_a.0")
    b = load_predictions(predictions / "predictions", "flow_b.0")
    scores, targets = combine([a, b])
    assert targets.tolist() == [0, 1, 2, 0]
    assert scores[0] == pytest.approx([0.45, 0.35, 0.2])  # video "1": (.6+.3)/2, ...
    assert scores[3] == pytest.approx([0.55, 0.275, 0.175])


@pytest.mark.slow
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


def set_ensemble(project, **ensemble) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ensemble"] = ensemble
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_ensemble_writes_the_tab13_table_and_logs_it(predictions):
    mml("ensemble")
    md = (predictions / "metrics/ensembles.md").read_text()
    singles = [
        "| `flow_b.0` | flow | 50.00 | 100.00 |",
        "| `rgb_a.0` | rgb | 50.00 | 100.00 |",
        "| `rgb_c.0` | rgb | 25.00 | 100.00 |",
    ]
    # gain over the best member: 100 - 50; flow_b + rgb_c: 50 - 50
    ranked = [
        "| 1 | `rgb_a.0` + `flow_b.0` | rgb + flow | 100.00 | 100.00 | +50.00 |",
        "| 2 | `flow_b.0` + `rgb_c.0` | flow + rgb | 50.00 | 100.00 | +0.00 |",
    ]
    # flow_b and rgb_a tie at 50: the smaller ref starts; no third modality: it stops at two
    greedy = [
        "| 1 | `flow_b.0` | `flow_b.0` | 50.00 | 100.00 | – |",
        "| 2 | `rgb_a.0` | `flow_b.0` + `rgb_a.0` | 100.00 | 100.00 | +50.00 |",
    ]
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r for r in rows if r in singles + ranked + greedy] == singles + ranked + greedy
    assert len(rows) == 3 + len(singles) + len(ranked) + len(greedy)  # + one header per table
    report = json.loads((predictions / "metrics/ensembles.json").read_text())
    assert [s["added"] for s in report["greedy"]] == ["flow_b.0", "rgb_a.0"]
    assert report["greedy_best"]["members"] == ["flow_b.0", "rgb_a.0"]
    client = MlflowClient()
    exp = client.get_experiment_by_name("mml-tiny")
    (run,) = client.search_runs([exp.experiment_id], "tags.`mml.role` = 'ensemble'")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "ensemble")}
    assert {"ensemble/ensembles.md", "ensemble/ensembles.json"} <= logged
    assert run.data.tags["greedy_members"] == "flow_b.0,rgb_a.0"


@pytest.mark.slow
def test_empty_candidates_combine_every_evaluated_model(predictions):
    (predictions / "predictions/rgb_a/notes.txt").write_text("not a prediction")
    set_ensemble(predictions, candidates=[], sizes=[2], distinct_modalities=False)
    mml("ensemble")
    report = json.loads((predictions / "metrics/ensembles.json").read_text())
    assert list(report["singles"]) == ["flow_b.0", "rgb_a.0", "rgb_c.0"]
    assert len(report["ensembles"]) == 3  # every pair of the three


def test_predicted_refs_sort_by_stage_then_model_number(tmp_path):
    for ref in ("rgb.10", "rgb.2", "flow.0"):
        stage, k = ref.split(".")
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / f"{k}.npz").touch()
    (tmp_path / "rgb" / ".3.npz.abc.tmp").touch()  # an interrupted atomic write
    (tmp_path / "rgb" / "scores.npz").touch()  # not <k>.npz: not a model's predictions
    assert predicted_refs(tmp_path.glob(predictions_glob())) == ["flow.0", "rgb.2", "rgb.10"]


def test_empty_candidates_with_one_evaluated_model_says_what_to_run(predictions):
    for stage in ("flow_b", "rgb_c"):
        (predictions / f"predictions/{stage}/0.npz").unlink()
    set_ensemble(predictions, candidates=[], sizes=[2])
    result = runner.invoke(app, ["ensemble", "-q"])
    assert result.exit_code == 2, result.output
    assert "at least two models" in result.output and "['rgb_a.0']" in result.output
    assert "run `mml evaluate STAGE` first" in result.output


GREEDY_TARGETS = np.array([0, 1, 2, 0, 1, 2])


def member(ref: str, modality: str, plan: list[tuple[float, bool]]) -> Predictions:
    """Per video: probability `p` on the true class (right) or on the next one (wrong)."""
    rows = []
    for target, (p, right) in zip(GREEDY_TARGETS, plan, strict=True):
        row = np.full(3, (1 - p) / 2)
        row[target if right else (target + 1) % 3] = p
        rows.append(row)
    ids = tuple(str(i) for i in range(len(plan)))
    return Predictions(ref, modality, np.array(rows), GREEDY_TARGETS, ids, tuple(CLASSES))


@pytest.fixture
def greedy_members() -> list[Predictions]:
    x = member("x.0", "rgb", [(0.6, True)] * 4 + [(0.6, False)] * 2)  # 66.7: best single
    v = member("v.0", "flow", [(0.7, True)] * 3 + [(0.5, False)] * 3)  # 50, but redundant with x
    y = member("y.0", "flow", [(0.5, False)] * 4 + [(0.9, True), (0.5, False)])  # fixes video 4
    z = member("z.0", "rgb", [(0.5, False)] * 4 + [(0.9, True)] * 2)  # fixes 4, 5: x + z 100
    w = member("w.0", "diff", [(0.5, False)] * 6)  # always wrong: never helps
    return [w, z, y, v, x]


def test_greedy_adds_the_member_that_helps_and_stops_when_none_does(greedy_members):
    steps = greedy_selection(greedy_members, "top1", False, True, max_size=3)
    # y (16.7 alone) beats v (50 alone) as a partner of x: x + y 83.3, x + v 66.7;
    # z shares x's modality; then only w is left and x + y + w drops to 16.7: stop at two
    assert [s["added"] for s in steps] == ["x.0", "y.0"]
    assert steps[-1]["members"] == ["x.0", "y.0"]
    assert [round(s["top1"], 1) for s in steps] == [66.7, 83.3]


def test_greedy_respects_distinct_modalities_only_when_asked(greedy_members):
    mixed = greedy_selection(greedy_members, "top1", False, False, max_size=3)
    assert [s["added"] for s in mixed] == ["x.0", "z.0"] and mixed[-1]["top1"] == 100.0
    capped = greedy_selection(greedy_members, "top1", False, False, max_size=1)
    assert [s["members"] for s in capped] == [["x.0"]]


def test_greedy_breaks_ties_by_ref_and_needs_a_strict_gain(greedy_members):
    x = greedy_members[-1]
    twin = Predictions("a_twin.0", "flow", x.scores, x.targets, x.ids, x.classes)
    steps = greedy_selection([x, twin], "top1", False, True, max_size=3)
    assert [s["members"] for s in steps] == [["a_twin.0"]]  # x + twin: equal, not better
