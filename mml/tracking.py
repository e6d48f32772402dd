"""MLflow conventions of mml (ARCHITECTURE §3): store, experiment, run layout, tags.

One parent run per stage, one nested run per model, created and written through an
`MlflowClient` with explicit run ids, so several models can log side by side and a
resumed training continues its own runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mml import fsio
from mml.config import Params, StageConfig

DEFAULT_STORE = Path("mlruns")
MAX_BATCH = 100  # MLflow's limit of params per log_batch call


def tracking_uri(params: Params) -> str:
    """$MLFLOW_TRACKING_URI, else `tracking.uri`, else sqlite:///mlruns/mlflow.db (absolute)."""
    return store_uri(params.tracking.uri)


def store_uri(configured: str | None) -> str:
    """$MLFLOW_TRACKING_URI, else `configured`, else sqlite:///mlruns/mlflow.db (absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def experiment_name(params: Params) -> str:
    return params.tracking.experiment or f"mml-{params.dataset.name}"


def client_and_experiment(params: Params) -> tuple[MlflowClient, str]:
    """A client on the configured store and the id of the dataset's experiment (created once)."""
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    with fsio.sqlite_init_lock(uri):  # several processes on a new sqlite store: one creates it
        client = MlflowClient(tracking_uri=uri)
        name = experiment_name(params)
        experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
        # keep artifacts beside the database, not in ./mlartifacts of whatever cwd
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    try:
        return client, client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return client, experiment.experiment_id


def git_commit() -> str:
    """HEAD's commit hash (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def start_stage(
    client: MlflowClient,
    experiment_id: str,
    params: Params,
    stage: str,
    params_hash: str = "",
    *,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> str:
    """Create the parent run of a stage and log its flattened params; returns its id.

    `params_hash` identifies everything the stage's training depends on (its params and the
    checkpoints it starts from): equal hashes, equal inputs. `parent_run_id` nests the run
    (a tuning trial under its study run), which gets `extra_tags` and `run_name`.
    """
    cfg = params.stage(stage)
    tags = {
        "stage": stage,
        "method": cfg.method,
        "dataset": params.dataset.name,
        "git_commit": git_commit(),
        "params_hash": params_hash,
        "mml.role": "stage",
    }
    if cfg.teacher:
        tags["teacher"] = cfg.teacher
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags.update(extra_tags or {})
    run = client.create_run(experiment_id, run_name=run_name or stage, tags=tags)
    log_params(client, run.info.run_id, {**params.flat(), **stage_params(cfg)})
    return run.info.run_id


def stage_params(cfg: StageConfig) -> dict[str, Any]:
    """The stage's own settings as `stage.*` params (loss weights, teacher)."""
    values = {"method": cfg.method, "models": len(cfg.models)}
    if cfg.method in ("ml", "mml"):
        values |= {"kl_weight": cfg.kl_weight, "kl_form": cfg.kl_form}
    if cfg.method in ("mars", "d3d"):
        values |= {"teacher": cfg.teacher, "distill_weight": cfg.distill}
    return {f"stage.{k}": v for k, v in values.items()}


def start_model(
    client: MlflowClient,
    experiment_id: str,
    params: Params,
    stage: str,
    index: int,
    parent_run_id: str,
    params_hash: str = "",
) -> str:
    """Create the nested run of model `index` of a stage, tagged for comparison in the UI."""
    cfg = params.stage(stage)
    spec = cfg.models[index]
    peers = [f"{m.modality}" for j, m in enumerate(cfg.models) if j != index]
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "stage": stage,
        "method": cfg.method,
        "modality": spec.modality,
        "init": spec.init,
        "peers": ",".join(peers) if cfg.method != "ce" else "",
        "dataset": params.dataset.name,
        "git_commit": git_commit(),
        "params_hash": params_hash,
        "model_index": str(index),
        "mml.role": "model",
    }
    if cfg.teacher:
        tags["teacher"] = cfg.teacher
    run = client.create_run(experiment_id, run_name=f"{stage}.{index}-{spec.modality}", tags=tags)
    log_params(
        client,
        run.info.run_id,
        {
            **params.flat(),
            **stage_params(cfg),
            "model.modality": spec.modality,
            "model.init": spec.init,
        },
    )
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), MAX_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_BATCH])


def log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], step: int | None = None
) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    for i in range(0, len(items), MAX_BATCH):
        client.log_batch(run_id, metrics=items[i : i + MAX_BATCH])


def log_artifacts(
    client: MlflowClient, run_id: str, paths: Iterable[Path], artifact_path: str | None = None
) -> None:
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def resume_run(client: MlflowClient, run_id: str) -> None:
    client.update_run(run_id, status="RUNNING")


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=status)
