"""mml.tracking: the names in the MLflow store, no process-wide URI side effect, git once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking._tracking_service import utils as mlflow_uri

from mml import tracking
from mml.config import Params


@pytest.fixture
def no_global_uri(monkeypatch, tmp_path) -> Path:
    """No tracking URI set anywhere (module value, variable), cwd an empty directory."""
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_names_in_the_store_stay_as_they_are():
    """Existing stores, saved `mlflow ui` searches and serving URIs depend on these strings."""
    params = Params.model_validate({"dataset": {"name": "ssv2"}})
    assert tracking.Tag.ROLE == "mml.role" and tracking.Tag.STUDY == "mml.study"
    assert tracking.Tag.PARENT_RUN == "mlflow.parentRunId"
    assert [tracking.Role.STAGE, tracking.Role.MODEL, tracking.Role.STUDY] == [
        "stage",
        "model",
        "study",
    ]
    assert tracking.registered_model_name(params, "ensemble") == "mml-ssv2-ensemble"
    assert tracking.champion_uri(params) == "models:/mml-ssv2-rgb@champion"
    assert tracking.VersionTag.FINGERPRINT == "mml.fingerprint"
    assert tracking.VersionTag.val("top1") == "val.top1"
    assert tracking.versions_filter("mml-ssv2-rgb") == "name = 'mml-ssv2-rgb'"
    assert tracking.study_filter("mml-ssv2-mml") == (
        "tags.`mml.role` = 'study' and tags.`mml.study` = 'mml-ssv2-mml'"
    )
    assert tracking.trial_tags("s", 3) == {"mml.trial": "3", "mml.study": "s"}


def test_client_and_experiment_leaves_the_process_wide_uri_alone(no_global_uri):
    uri = f"sqlite:///{no_global_uri / 'store' / 'mlflow.db'}"
    (no_global_uri / "store").mkdir()
    params = Params.model_validate({"dataset": {"name": "tiny"}, "tracking": {"uri": uri}})
    before = mlflow.get_tracking_uri()
    client, experiment_id = tracking.client_and_experiment(params)
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert client.tracking_uri == uri
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == "mml-tiny"
    # a sqlite store named by params keeps its artifacts beside the database
    assert experiment.artifact_location == (no_global_uri / "store" / "artifacts").as_uri()


def test_fluent_store_restores_the_uri_and_the_users_variable(no_global_uri, monkeypatch):
    client = mlflow.MlflowClient(f"sqlite:///{no_global_uri / 'a.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///users.db")
    with tracking.fluent_store(client):
        assert mlflow.get_tracking_uri() == client.tracking_uri
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///users.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert mlflow.get_tracking_uri() == "sqlite:///other.db"  # no module value left behind
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(KeyError), tracking.fluent_store(client):
        raise KeyError("inside")
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_git_commit_runs_git_once_per_process(monkeypatch):
    real_run, commands = subprocess.run, []

    def counting_run(args, *rest, **kwargs):
        commands.append(args[:2])
        return real_run(args, *rest, **kwargs)

    tracking.git_commit.cache_clear()
    monkeypatch.setattr(tracking.subprocess, "run", counting_run)
    first = tracking.git_commit()
    assert [tracking.git_commit() for _ in range(3)] == [first] * 3
    assert commands == [["git", "rev-parse"], ["git", "status"]]
    monkeypatch.setattr(tracking.subprocess, "run", real_run)
    assert tracking.git_commit.__wrapped__() == first  # what every call computed before


def test_writes_to_a_shared_run_are_retried_and_every_process_lands_its_values(tmp_path):
    """Several processes write the same new tag and metric to one study run at once (every
    `mml tune` worker finishes that way): each write lands, none fails on the store's race."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("shared")).info.run_id
    script = (
        "import sys, time\n"
        "from mlflow import MlflowClient\n"
        "from mml import tracking\n"
        "client, run, worker = MlflowClient(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "time.sleep(max(0.0, float(sys.argv[4]) - time.time()))\n"
        "for i in range(20):\n"
        "    tracking.write_shared(lambda: client.set_tag(run, f'best.k{i}', worker))\n"
        "    tracking.write_shared(lambda: tracking.log_metrics(client, run, {f'm{i}': 1.0}))\n"
    )
    start = str(time.time() + 8)  # both start writing at this moment
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, run_id, str(w), start],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for w in range(2)
    ]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    data = client.get_run(run_id).data
    assert all(data.tags[f"best.k{i}"] in ("0", "1") for i in range(20))
    assert set(data.metrics) == {f"m{i}" for i in range(20)}


def test_a_write_that_keeps_failing_is_raised_after_its_retries():
    calls = []

    def write() -> None:
        calls.append(1)
        raise mlflow.exceptions.MlflowException("Changing param values is not allowed")

    with pytest.raises(mlflow.exceptions.MlflowException, match="Changing param"):
        tracking.write_shared(write, attempts=3)
    assert len(calls) == 3
