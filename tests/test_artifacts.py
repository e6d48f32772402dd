"""mml.artifacts: the pipeline's files round-trip through their records, and malformed or
old-layout files are refused with the file named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mml import artifacts
from mml.artifacts import ArtifactError, ModelMetrics, Predictions, StageMetrics, TunedValues
from mml.config import ConfigError, DatasetConfig


def test_stage_metrics_round_trip_with_models_apart_from_the_stage_keys(tmp_path):
    models = {
        0: ModelMetrics("rgb", "scratch", {"top1": 61.5, "top5": 99.0}, {"a": 50.0, "b": None}),
        10: ModelMetrics("flow", "rgb_ce.0", {"top1": 40.0, "top5": 90.0}),
    }
    written = StageMetrics("Dense 1 + Uniform 2", "logits", ["v9"], models)
    path = artifacts.metrics_path(tmp_path, "rgb_ce")
    artifacts.write_stage_metrics(path, written)
    data = json.loads(path.read_text())
    assert set(data) == {"views", "fuse", "skipped", "models"}
    assert list(data["models"]) == ["0", "10"]  # by model number, not as text
    assert "per_class_top1" not in data["models"]["10"]
    assert artifacts.read_stage_metrics(path) == written
    assert artifacts.evaluated_models(tmp_path, ["rgb_ce", "absent"]) == {
        "rgb_ce.0": models[0],
        "rgb_ce.10": models[10],
    }


def test_a_metrics_file_of_the_old_layout_or_not_json_is_refused_by_name(tmp_path):
    old = tmp_path / "rgb_ce.json"
    old.write_text(json.dumps({"views": "x", "0": {"modality": "rgb", "top1": 1.0}}))
    with pytest.raises(ArtifactError, match=r"rgb_ce.json.*mml evaluate"):
        artifacts.read_stage_metrics(old)
    old.write_text("{")
    with pytest.raises(ArtifactError, match="rgb_ce.json: not JSON"):
        artifacts.read_stage_metrics(old)
    with pytest.raises(ConfigError, match="mml evaluate mml"):
        artifacts.read_stage_metrics(tmp_path / "mml.json")


def test_predictions_round_trip_and_their_refs_sort_by_stage_then_number(tmp_path):
    scores = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    p = Predictions("rgb.10", "rgb", scores, np.array([0, 1]), ("a", "b"), ("x", "y"))
    path = artifacts.predictions_path(tmp_path, p.ref)
    assert path == tmp_path / "rgb" / "10.npz"
    artifacts.write_predictions(path, p)
    artifacts.write_predictions(artifacts.predictions_path(tmp_path, "rgb.2"), p)
    back = artifacts.load_predictions(tmp_path, "rgb.10")
    assert (back.ref, back.modality, back.ids, back.classes) == (p.ref, "rgb", p.ids, p.classes)
    np.testing.assert_array_equal(back.scores, scores)
    assert back.metric == "top1" and not back.multilabel
    found = artifacts.predicted_refs(tmp_path.glob(artifacts.predictions_glob()))
    assert found == ["rgb.2", "rgb.10"]
    with pytest.raises(ConfigError, match="mml evaluate flow"):
        artifacts.load_predictions(tmp_path, "flow.0")


def test_the_dataset_decides_the_metric():
    assert artifacts.dataset_metric(DatasetConfig(format="charades")) == "mAP"
    assert artifacts.dataset_metric(DatasetConfig(format="ssv2")) == "top1"
    assert artifacts.dataset_metric(DatasetConfig(format="csv")) == "top1"


@pytest.mark.parametrize("ref", ["rgb", "rgb.", ".0", "rgb.x", "rgb.-1"])
def test_a_model_reference_needs_a_stage_and_a_number(ref):
    with pytest.raises(ConfigError, match="not a model reference"):
        artifacts.split_ref(ref)


@pytest.mark.parametrize("ref", ["../../etc/passwd.0", "a/b.0", "..\\x.0", ".hidden.0"])
def test_a_package_member_file_cannot_leave_the_package(ref):
    with pytest.raises(ArtifactError):
        artifacts.package_member(ref)


def test_checkpoint_paths():
    assert artifacts.checkpoint_path("ck", "mml_rfd.2").as_posix() == "ck/mml_rfd/2.pt"
    assert (
        artifacts.last_checkpoint(artifacts.checkpoint_dir("ck", "a")).as_posix() == "ck/a/last.pt"
    )


def test_tuned_values_round_trip_and_refuse_another_stages_file(tmp_path):
    path = artifacts.tuned_path(tmp_path, "mml")
    artifacts.write_tuned(path, TunedValues("mml", "study", 3, 81.5, {"stages.kl_weight": 0.3}))
    assert artifacts.read_tuned(path, "mml").values == {"stages.kl_weight": 0.3}
    with pytest.raises(ConfigError, match="holds values for stage 'mml', not 'rgb'"):
        artifacts.read_tuned(path, "rgb")


def package() -> artifacts.PackageConfig:
    return artifacts.PackageConfig(
        "ensemble",
        ("a", "b"),
        False,
        (1, 2),
        "logits",
        32,
        "tvl1",
        4.0,
        (("rgb_ce.0", "rgb"), ("flow.1", "flow")),
    )


def test_a_package_config_round_trips(tmp_path):
    artifacts.write_package_config(tmp_path, package())
    assert artifacts.read_package_config(tmp_path) == package()
    files = [
        m["file"] for m in json.loads(artifacts.package_config(tmp_path).read_text())["members"]
    ]
    assert files == ["rgb_ce.0.pt", "flow.1.pt"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("format", 2, "model package format 2, need 1"),
        ("classes", [], "classes must be"),
        ("views", {"dense": 0, "uniform": 0}, "views must be"),
        ("views", {"dense": "1", "uniform": 2}, "views must be"),
        ("flow", {"algorithm": "tvl1", "bound": -1}, "flow.bound must be"),
        ("short_side", 0, "short_side must be"),
        ("kind", "other", "kind must be"),
        ("fuse", "max", "fuse must be"),
        ("multilabel", "no", "multilabel must be"),
        ("members", [], "members must be"),
        ("members", [{"ref": "x.0", "modality": "rgb", "file": "../../x.pt"}], "file must be"),
        ("members", [{"ref": "../x.0", "modality": "rgb"}], "not a model reference"),
    ],
)
def test_a_package_config_from_elsewhere_is_checked_key_by_key(tmp_path, key, value, message):
    data = package().to_json() | {key: value}
    artifacts.package_config(tmp_path).write_text(json.dumps(data))
    with pytest.raises(artifacts.UserError, match=message):
        artifacts.read_package_config(tmp_path)


def test_evaluated_stages_are_the_metrics_files_but_the_ensembles(tmp_path):
    for name in ("rgb_ce", "mml", artifacts.ENSEMBLES):
        artifacts.write_json(artifacts.metrics_path(tmp_path, name), {})
    assert artifacts.evaluated_stages(tmp_path) == ["mml", "rgb_ce"]
