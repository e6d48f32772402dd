"""mml against a real `mlflow server` (tracking and registry over HTTP) on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_for_http
from mlflow.tracking import MlflowClient
from test_pipeline import mml

from mml.config import load_params
from mml.data.dataset import load_split

pytestmark = pytest.mark.slow  # an `mlflow server` subprocess, training


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` with a sqlite backend and proxied artifacts, as in production (where
    the database is PostgreSQL/MySQL and the artifact root an object store)."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_train_promote_predict_through_an_mlflow_server(project, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mml("train", "rgb_ce")
    mml("evaluate", "rgb_ce")
    out = mml("promote")
    assert "moved champion to version 1" in out
    assert not (project / "mlruns" / "mlflow.db").exists()  # nothing went to a local store

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("mml-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'rgb_ce'")
    assert {r.data.tags["mml.role"] for r in runs} == {"stage", "model"}
    model_run = next(r for r in runs if r.data.tags["mml.role"] == "model")
    names = {a.path for a in client.list_artifacts(model_run.info.run_id, "checkpoint")}
    assert names == {"checkpoint/0.pt"}  # uploaded through the server's artifact proxy
    version = client.get_model_version_by_alias("mml-tiny-rgb", "champion")
    assert version.tags["source_run"] == model_run.info.run_id

    video = load_split(load_params("params.yaml").dataset, "val").records[0].path
    out = mml("predict", str(video), "--json", "--top", "2")  # downloads the model over HTTP
    assert '"label"' in out and str(video) in out
