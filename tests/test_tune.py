"""`mml tune`: Optuna over a stage — shared studies, seeded sampling, pruning, tuned values."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import free_port, wait_for_http
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_pipeline import mml, runner

from mml.cli import app
from mml.config import ConfigError, load_params
from mml.tune import TrialSeededTPE, open_storage

SPACE = {
    "stage.kl_weight": {"low": 0.5, "high": 2.0, "log": True},
    "train.lr": {"low": 0.01, "high": 0.1, "log": True},
    "clip.mix": {"low": 0.0, "high": 1.0},
}


@pytest.fixture
def tune_project(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    params["stages"]["rgb_ml"] = {
        "method": "ml",
        "models": [{"modality": "rgb", "init": "scratch"}, {"modality": "rgb", "init": "scratch"}],
    }
    params["tune"] = {"seed": 5, "epochs": 1, "space": SPACE, "pruner": {"startup_trials": 4}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def dashboard_trials(storage: str, study: str) -> int:
    """How many trials of `study` optuna-dashboard shows, started on `storage` as the README
    says (`optuna-dashboard <journal file or SQLAlchemy URL>`) on 127.0.0.1."""
    port = free_port()
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), storage]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    api = f"http://127.0.0.1:{port}/api/studies"
    try:
        wait_for_http(api, dashboard, timeout=120)
        summaries = json.loads(urllib.request.urlopen(api, timeout=30).read())["study_summaries"]
        (found,) = [s for s in summaries if s["study_name"] == study]
        detail = urllib.request.urlopen(f"{api}/{found['study_id']}", timeout=60).read()
        return len(json.loads(detail)["trials"])
    except Exception as err:
        dashboard.terminate()
        output = dashboard.communicate()[0]
        raise AssertionError(f"optuna-dashboard {storage}: {err!r}\n{output}") from err
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "rdb"])
def test_two_workers_share_one_study_without_duplicates(tune_project, storage):
    """Two processes, one study: a journal file (the default) or an RDB (SQLAlchemy URL)."""
    url = (
        str(tune_project / "optuna/tiny.journal")
        if storage == "journal"
        else f"sqlite:///{tune_project / 'optuna.db'}"
    )
    cmd = [
        sys.executable,
        "-m",
        "mml",
        "tune",
        "rgb_ml",
        "--trials",
        "4",
        "--quiet",
        "--storage",
        url,
    ]
    workers = [
        subprocess.Popen(
            cmd, cwd=tune_project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    study = optuna.load_study(study_name="mml-tiny-rgb_ml", storage=open_storage(url))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4  # the study's total, not 4 per worker
    assert len({t.number for t in done}) == 4
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4  # no trial repeated
    assert {t.user_attrs["pid"] for t in done} == {w.pid for w in workers}  # both worked
    others = [t for t in study.trials if t not in done]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in others)
    assert dashboard_trials(url, "mml-tiny-rgb_ml") == len(study.trials)

    client = MlflowClient()
    exp = client.get_experiment_by_name("mml-tiny")
    studies = client.search_runs([exp.experiment_id], "tags.`mml.role` = 'study'")
    assert len(studies) == 1  # one study run, whoever created it
    study_run = studies[0].info.run_id
    trials = client.search_runs([exp.experiment_id], "tags.`mml.study` = 'mml-tiny-rgb_ml'")
    trial_runs = [r for r in trials if r.data.tags.get("mml.role") == "stage"]
    assert sorted(int(r.data.tags["mml.trial"]) for r in trial_runs) == sorted(
        t.number for t in done
    )
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {study_run}
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    for r in trial_runs:  # each trial ran with its own sampled values
        number = int(r.data.tags["mml.trial"])
        values = study.trials[number].params
        assert float(r.data.params["stage.kl_weight"]) == pytest.approx(values["stage.kl_weight"])
        assert float(r.data.params["train.lr"]) == pytest.approx(values["train.lr"])
    assert not (tune_project / "checkpoints").exists()  # trials leave the real stage alone

    tuned = yaml.safe_load((tune_project / "tuned/rgb_ml.yaml").read_text())
    best = max((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert tuned["values"] == best.params and tuned["trial"] == best.number

    out = mml("train", "rgb_ml", "--tuned")
    assert "rgb_ml.0" in out
    parents = client.search_runs(
        [exp.experiment_id], "tags.stage = 'rgb_ml' and tags.`mml.role` = 'stage'"
    )
    (trained,) = [r for r in parents if "mml.trial" not in r.data.tags]
    assert float(trained.data.params["stage.kl_weight"]) == pytest.approx(
        tuned["values"]["stage.kl_weight"]
    )
    assert float(trained.data.params["clip.mix"]) == pytest.approx(tuned["values"]["clip.mix"])


def test_sampling_depends_on_seed_and_trial_number_only():
    def draws(seed: int) -> list[dict]:
        study = optuna.create_study(
            sampler=TrialSeededTPE(seed, n_startup_trials=3), direction="maximize"
        )
        study.optimize(lambda t: -((t.suggest_float("x", 0, 1) - 0.3) ** 2), n_trials=6)
        return [t.params for t in study.trials]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


@pytest.mark.slow
def test_a_pruned_trial_stops_training_and_is_recorded(tune_project, monkeypatch):
    # a pruner that prunes every trial after its first epoch
    monkeypatch.setattr(
        optuna.pruners, "MedianPruner", lambda **_: optuna.pruners.ThresholdPruner(lower=1e9)
    )
    out = mml("tune", "rgb_ml", "--trials", "1")
    assert "pruned 1" in out and "nothing written" in out
    assert not (tune_project / "tuned/rgb_ml.yaml").exists()
    client = MlflowClient()
    exp = client.get_experiment_by_name("mml-tiny")
    (trial_run,) = client.search_runs([exp.experiment_id], "tags.`mml.trial` = '0'")
    assert trial_run.data.tags["optuna.state"] == "PRUNED"
    models = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{trial_run.info.run_id}'"
    )
    assert len(models) == 2
    for run in models:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val/top1")) == 1  # stopped


def test_trials_validate_every_tune_val_every_epochs_whatever_the_stage_does(tune_project):
    # the stage itself validates only after its last epoch; the pruner needs earlier ones
    settings = ["-S", "train.val_every=6", "-S", "tune.epochs=2", "-S", "tune.val_every=1"]
    mml("tune", "rgb_ml", "--trials", "1", *settings)
    client = MlflowClient()
    exp = client.get_experiment_by_name("mml-tiny")
    (trial_run,) = client.search_runs([exp.experiment_id], "tags.`mml.trial` = '0'")
    models = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{trial_run.info.run_id}'"
    )
    assert len(models) == 2
    for run in models:
        history = client.get_metric_history(run.info.run_id, "val/top1")
        assert sorted(m.step for m in history) == [0, 1]


def test_bad_tuning_config_is_a_clear_error(tune_project):
    bad_space = "tune.space={optim.lr: {low: 1, high: 2}}"
    result = runner.invoke(app, ["tune", "rgb_ml", "-S", bad_space])
    assert result.exit_code == 2
    assert "optim.lr" in result.output and "section" in result.output
    result = runner.invoke(app, ["train", "rgb_ml", "--tuned"])
    assert result.exit_code == 2 and "run `mml tune rgb_ml`" in result.output
    with pytest.raises(ConfigError, match="low < high"):
        load_params(tune_project / "params.yaml", ["tune.space={train.lr: {low: 2, high: 1}}"])


def test_zero_trials_is_off_and_keeps_tuned_values(tune_project):
    out = mml("tune", "rgb_ml", "--trials", "0")
    assert "tuning is off" in out
    tuned = tune_project / "tuned/rgb_ml.yaml"
    assert yaml.safe_load(tuned.read_text())["values"] == {}
    assert not (tune_project / "optuna").exists()  # no study was opened
    tuned.write_text(yaml.safe_dump({"stage": "rgb_ml", "values": {"train.lr": 0.02}}))
    mml("tune", "rgb_ml", "--trials", "0")  # a manual run's values survive the pipeline stage
    assert yaml.safe_load(tuned.read_text())["values"] == {"train.lr": 0.02}


def test_tuning_and_registry_settings_leave_training_fingerprints_alone(project):
    from mml.train import Trainer

    def fingerprint(*overrides: str) -> str:
        params = load_params(project / "params.yaml", list(overrides))
        return Trainer(params, "rgb_ce", show_progress=False).fingerprint()

    base = fingerprint()
    assert fingerprint("tune.trials=3", "promote.timing_videos=9", "ensemble.sizes=[2]") == base
    assert fingerprint("train.lr=0.5") != base  # a training setting does change it
    assert fingerprint("compute.precision=float64") != base  # so does the arithmetic
    assert fingerprint("compute.threads=1", "loader.workers=0", "compute.nproc=2") == base
    # the stage's own overrides: how it is tested or loaded leaves its training alone
    test_only = '{"evaluate.uniform_views": 1, "evaluate.fuse": probs, "loader.workers": 0}'
    assert fingerprint(f"stages.rgb_ce.overrides={test_only}") == base
    assert fingerprint('stages.rgb_ce.overrides={"train.lr": 0.5}') != base
    assert fingerprint('stages.rgb_ce.overrides={"seed": 7}') != base
