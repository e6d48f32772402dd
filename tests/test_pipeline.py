"""End to end on tiny real videos: train (CE), resume, evaluate, MLflow, bad videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import copy_dataset, tiny_params
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from mml.artifacts import read_stage_metrics
from mml.cli import app
from mml.train import Trainer

pytestmark = pytest.mark.slow  # every test trains

runner = CliRunner()


def mml(*args: str) -> str:
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def runs(stage: str) -> tuple:
    client = MlflowClient()
    exp = client.get_experiment_by_name("mml-tiny")
    found = client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")
    parents = [r for r in found if r.data.tags["mml.role"] == "stage"]
    children = [r for r in found if r.data.tags["mml.role"] == "model"]
    return client, parents, children


def test_train_and_evaluate_track_everything(project):
    out = mml("train", "rgb_ce")
    assert "rgb_ce.0" in out
    for name in ("0.pt", "last.pt"):
        payload = torch.load(project / "checkpoints/rgb_ce" / name, weights_only=True)
        assert payload["format"] == 1

    client, parents, children = runs("rgb_ce")
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for tag in ("stage", "method", "modality", "init", "peers", "dataset", "git_commit"):
        assert tag in child.data.tags
    assert len(child.data.tags["params_hash"]) == 16
    assert child.data.tags["params_hash"] == parent.data.tags["params_hash"]
    assert child.data.tags["modality"] == "rgb" and child.data.tags["init"] == "scratch"
    assert child.data.params["train.epochs"] == "2" and child.data.params["clip.segments"] == "4"
    history = client.get_metric_history(child.info.run_id, "val/top1")
    assert [m.step for m in history] == [0, 1]
    assert {"train/loss_ce", "val/top5", "lr"} <= set(child.data.metrics)
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")]
    assert artifacts == ["checkpoint/0.pt"]
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"

    out = mml("evaluate", "rgb_ce")
    assert "Dense 1 + Uniform 2" in out
    report = read_stage_metrics(project / "metrics/rgb_ce.json")
    assert report.views == "Dense 1 + Uniform 2" and 0 <= report.models[0].scores["top1"] <= 100
    assert len(report.models[0].per_class_top1) == 4
    npz = np.load(project / "predictions/rgb_ce/0.npz")
    assert npz["scores"].shape == (8, 4) and np.allclose(npz["scores"].sum(1), 1, atol=1e-5)
    assert (project / "plots/rgb_ce/eval/confusion_0.png").stat().st_size > 1000
    curves = (project / "plots/rgb_ce/curves/0.csv").read_text().splitlines()
    assert curves[0].startswith("epoch,train_loss_ce,") and "val_top1" in curves[0]
    assert [line.split(",")[0] for line in curves[1:]] == ["1", "2"]
    child = client.get_run(child.info.run_id)
    assert child.data.metrics["test/top1"] == pytest.approx(report.models[0].scores["top1"])
    names = {a.path for a in client.list_artifacts(child.info.run_id, "evaluation")}
    assert names == {"evaluation/0.npz", "evaluation/confusion_0.png"}


@pytest.mark.parametrize(  # fp16: the loss scaler resumes too
    "precision", ["float32", pytest.param("fp16", marks=pytest.mark.slow)]
)
def test_interrupted_training_resumes_to_the_same_result(project, monkeypatch, precision):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    params["compute"] = {"precision": precision}
    params["loader"]["workers"] = 2  # resume must not depend on worker scheduling
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    mml("train", "rgb_ce")
    reference = json.loads(
        json.dumps(
            torch.load(project / "checkpoints/rgb_ce/last.pt", weights_only=True)["members"][0][
                "history"
            ]
        )
    )
    ref_weights = torch.load(project / "checkpoints/rgb_ce/0.pt", weights_only=True)

    original = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # as if Ctrl-C'd during the third epoch
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    result = runner.invoke(app, ["train", "rgb_ce", "--quiet", "--restart"])
    assert result.exit_code == 130 and "resume" in result.output
    assert torch.load(project / "checkpoints/rgb_ce/last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(Trainer, "train_epoch", original)
    mml("train", "rgb_ce")  # resumes from last.pt
    resumed = torch.load(project / "checkpoints/rgb_ce/last.pt", weights_only=True)
    assert resumed["epoch"] == 3
    assert resumed["members"][0]["history"] == reference
    weights = torch.load(project / "checkpoints/rgb_ce/0.pt", weights_only=True)["state_dict"]
    for key, value in ref_weights["state_dict"].items():
        assert torch.equal(value, weights[key]), key
    _, parents, _ = runs("rgb_ce")
    assert len(parents) == 2  # the uninterrupted run and the interrupted + resumed one


def test_resume_refuses_other_params_unless_told_to_restart(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    params["stages"]["next"] = {"method": "ce", "models": [{"init": "rgb_ce.0"}]}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    mml("train", "rgb_ce")
    result = runner.invoke(app, ["train", "rgb_ce", "-q", "-S", "train.epochs=2"])
    assert result.exit_code == 2 and "--restart" in result.output
    mml("train", "rgb_ce", "-S", "train.epochs=2", "--restart-if-changed")  # what DVC runs
    assert torch.load(project / "checkpoints/rgb_ce/last.pt", weights_only=True)["epoch"] == 2
    # a stage's inputs include the checkpoints it starts from: retraining them invalidates it
    mml("train", "next", "-S", "train.epochs=2")
    mml("train", "rgb_ce", "-S", "train.epochs=2", "--restart")
    result = runner.invoke(app, ["train", "next", "-q", "-S", "train.epochs=2"])
    assert result.exit_code == 2 and "init/teacher checkpoints" in result.output


def test_broken_video_is_reported_and_skipped(project, tiny_dataset, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path / "broken_data")
    victim = sorted((root / "videos").glob("*.webm"))[0]
    victim.write_bytes(b"\x1aE\xdf\xa3 this is not a video")
    params = tiny_params(root, train={"epochs": 1})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["data", "check", "-q"])
    assert result.exit_code == 1 and f"broken {victim.stem}" in result.output
    mml("train", "rgb_ce")
    client, _, children = runs("rgb_ce")
    assert children[0].data.metrics["data/skipped"] == 1


def test_mutual_learning_stage_logs_kl(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    two = [{"modality": "rgb", "init": "scratch"}, {"modality": "rgb", "init": "scratch"}]
    params["stages"]["rgb_ml"] = {"method": "ml", "models": two}
    params["stages"]["same"] = {"method": "ml", "models": [{"init": "rgb_ce.0"}] * 2}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    mml("train", "rgb_ml")
    _, parents, children = runs("rgb_ml")
    assert len(children) == 2 and all(c.data.metrics["train/loss_kl"] > 0 for c in children)
    assert {c.data.tags["peers"] for c in children} == {"rgb"}
    result = runner.invoke(app, ["train", "same", "-q"])
    assert result.exit_code == 2 and "zero mutual KL" in result.output


def test_validation_every_n_epochs_and_always_after_the_last(project):
    mml("train", "rgb_ce", "-S", "train.epochs=3", "-S", "train.val_every=2")
    client, _, (child,) = runs("rgb_ce")
    steps = {
        k: [m.step for m in client.get_metric_history(child.info.run_id, k)]
        for k in ("train/loss_ce", "val/top1")
    }
    assert steps == {"train/loss_ce": [0, 1, 2], "val/top1": [1, 2]}
    rows = [line.split(",") for line in (project / "plots/rgb_ce/curves/0.csv").read_text().split()]
    top1 = rows[0].index("val_top1")
    assert [row[top1] != "" for row in rows[1:]] == [False, True, True]


@pytest.mark.slow
def test_cache_shards_from_the_cli_build_the_whole_cache_together(project):
    out = [mml("data", "diff", "--shard", f"{k}/2", "--workers", "1") for k in range(2)]
    assert all("(shard " in o and "0 broken" in o for o in out)
    built = [int(o.split(": ")[1].split(" built")[0]) for o in out]
    assert min(built) > 0
    again = mml("data", "diff")  # the unsharded build finds every video cached
    assert f"0 built, {sum(built)} already cached, 0 invalidated" in again
    result = runner.invoke(app, ["data", "diff", "--shard", "2/2"])
    assert result.exit_code != 0 and "0 <= K < N" in result.output


def test_a_diff_stage_trains_the_same_models_from_the_videos_as_from_a_stored_cache(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    params["stages"]["diff_ce"] = {"method": "ce", "models": [{"modality": "diff"}]}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    cache = project / "data/cache/tiny/diff"

    def trained() -> tuple[dict, float]:
        state = torch.load(project / "checkpoints/diff_ce/0.pt", weights_only=True)
        metrics = read_stage_metrics(project / "metrics/diff_ce.json")
        return state["state_dict"], metrics.models[0].scores["top1"]

    assert "0 broken" in mml("data", "diff")
    mml("train", "diff_ce", "--evaluate")
    stored_model, stored_top1 = trained()
    out = mml("data", "diff", "-S", "cache.diff_from_video=true")
    assert "computed from the videos when read" in out and "nothing stored" in out
    assert [p.name for p in cache.iterdir()] == ["settings.json"]
    mml("train", "diff_ce", "--restart", "--evaluate")
    video_model, video_top1 = trained()
    assert video_top1 == stored_top1
    assert stored_model.keys() == video_model.keys()
    assert all(torch.equal(stored_model[k], video_model[k]) for k in stored_model)
