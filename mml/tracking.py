"""MLflow conventions of mml (ARCHITECTURE §3): store, experiment, run layout, every name.

Every MLflow name mml writes or searches is defined here and nowhere else: run tag keys and
`mml.role` values, run names, registered-model names, the alias, model-version tags and search
filters (existing stores and `mlflow ui` searches depend on them: change none).

One parent run per stage, one nested run per model, created and written through an
`MlflowClient` bound to the store, with explicit run ids, so several models can log side by
side and a resumed training continues its own runs. Nothing here sets MLflow's process-wide
tracking URI, except `fluent_store` for the duration of the few fluent calls that read it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_uri_state  # the URI's home
from sqlalchemy.exc import SQLAlchemyError

from mml import fsio
from mml.config import Params, StageConfig

DEFAULT_STORE = Path("mlruns")
MAX_BATCH = 100  # MLflow's limit of params per log_batch call
URI_VARIABLE = "MLFLOW_TRACKING_URI"


# ---- names -----------------------------------------------------------------------------------
class Tag:
    """Keys of the run tags mml writes (plain strings: MLflow stores and searches strings)."""

    ROLE = "mml.role"  # what a run is: one of `Role`
    STAGE = "stage"
    METHOD = "method"
    DATASET = "dataset"
    GIT_COMMIT = "git_commit"
    PARAMS_HASH = "params_hash"  # everything a stage's training depends on (equal: same inputs)
    TEACHER = "teacher"
    PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: nests a run under another in the UI
    MODALITY = "modality"
    INIT = "init"
    PEERS = "peers"
    MODEL_INDEX = "model_index"
    PROCESSES = "mml.processes"  # DDP processes that trained the stage
    STUDY = "mml.study"  # the Optuna study of a study run and of its trials
    TRIAL = "mml.trial"
    OPTUNA_STORAGE = "optuna.storage"
    OPTUNA_STATE = "optuna.state"  # COMPLETE | PRUNED, on a trial's stage run
    BEST_TRIAL = "best_trial"
    BEST_VALUE_PREFIX = "best."  # best.<param> on a study run: the best trial's values
    BEST_MEMBERS = "best_members"  # of the ensemble run
    GREEDY_MEMBERS = "greedy_members"


class Role:
    """Values of the `mml.role` tag."""

    STAGE = "stage"  # the parent run of a trained stage (also of a tuning trial)
    MODEL = "model"  # one model of a stage, nested in the stage's run
    STUDY = "study"  # an Optuna study (`mml tune`); its trials are nested in it
    ENSEMBLE = "ensemble"
    REPORT = "report"
    PROMOTE = "promote"
    PRETRAIN = "pretrain"  # `mml pretrain`: the default's stand-in for ImageNet weights


class VersionTag:
    """Keys of the tags of a registered model version (written by `mml promote`)."""

    METRIC = "metric"  # the validation metric that ranks versions: `val(METRIC)` holds it
    CPU_MS_PER_VIDEO = "cpu_ms_per_video"
    GIT_COMMIT = "git_commit"
    DATA_HASH = "data_hash"
    PARAMS_HASH = "params_hash"  # the members' runs' `params_hash`, comma-separated
    SOURCE_STAGE = "source_stage"
    SOURCE_MODELS = "source_models"
    SOURCE_RUN = "source_run"
    FINGERPRINT = "mml.fingerprint"  # checkpoints + inference settings: same, same version

    @staticmethod
    def val(metric: str) -> str:
        """The tag holding validation `metric` (top1, top5, mAP) of the version."""
        return f"val.{metric}"


CHAMPION = "champion"  # the alias of the version that `mml predict` and serving load


def registered_model_name(params: Params, kind: str) -> str:
    """The registered model of `kind` ('rgb' or 'ensemble'): mml-<dataset>-<kind>."""
    return f"mml-{params.dataset.name}-{kind}"


def champion_uri(params: Params, kind: str = "rgb") -> str:
    """models:/mml-<dataset>-<kind>@champion."""
    return f"models:/{registered_model_name(params, kind)}@{CHAMPION}"


def versions_filter(name: str) -> str:
    """The `search_model_versions` filter for every version of registered model `name`."""
    return f"name = '{name}'"


def study_filter(study: str) -> str:
    """The `search_runs` filter for the study run of Optuna study `study`."""
    return f"tags.`{Tag.ROLE}` = '{Role.STUDY}' and tags.`{Tag.STUDY}` = '{study}'"


MODEL_RUNS = f"tags.`{Tag.ROLE}` = '{Role.MODEL}'"  # the filter for every model run
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def runs_filter(run_ids: Iterable[str]) -> str:
    """The `search_runs` filter (also the UI's) for exactly the runs `run_ids`."""
    return "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"


def runs_table_url(address: str, experiment_id: str, search_filter: str) -> str:
    """The MLflow UI's runs table of the experiment at `address`, filtered by `search_filter`.

    Sorted by run name: with a filter set and any order but creation time, the UI lists nested
    runs flat, so model runs show at the top level instead of folded under their stage runs."""
    query = urllib.parse.urlencode(
        {
            "searchFilter": search_filter,
            "orderByKey": "tags.`mlflow.runName`",
            "orderByAsc": "true",
        },
        quote_via=urllib.parse.quote,
    )
    return f"{address.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def trial_run_name(stage: str, number: int) -> str:
    """The name of trial `number`'s stage run (the study run is 'tune <stage>')."""
    return f"{stage} trial {number}"


def trial_tags(study: str, number: int) -> dict[str, str]:
    """The tags of trial `number`'s stage run, besides the stage run's own."""
    return {Tag.TRIAL: str(number), Tag.STUDY: study}


def tracking_uri(params: Params) -> str:
    """$MLFLOW_TRACKING_URI, else `tracking.uri`, else sqlite:///mlruns/mlflow.db (absolute)."""
    return store_uri(params.tracking.uri)


def store_uri(configured: str | None) -> str:
    """$MLFLOW_TRACKING_URI, else `configured`, else sqlite:///mlruns/mlflow.db (absolute)."""
    uri = os.environ.get(URI_VARIABLE) or configured
    if uri:
        return uri
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def experiment_name(params: Params) -> str:
    return params.tracking.experiment or f"mml-{params.dataset.name}"


def client_and_experiment(params: Params) -> tuple[MlflowClient, str]:
    """A client bound to the configured store and the id of the dataset's experiment (created
    once). MLflow's process-wide tracking URI is left alone: pass the client on."""
    uri = tracking_uri(params)
    with fsio.sqlite_init_lock(uri):  # several processes on a new sqlite store: one creates it
        client = MlflowClient(tracking_uri=uri)
        name = experiment_name(params)
        experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///") and not os.environ.get(URI_VARIABLE):
        # keep artifacts beside the database, not in ./mlruns of whatever cwd (MLflow's default)
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    try:
        return client, client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return client, experiment.experiment_id


@contextmanager
def fluent_store(client: MlflowClient) -> Iterator[None]:
    """Point MLflow's fluent API at `client`'s store for the block, then restore what was set.

    `mlflow.start_run`, `mlflow.pyfunc.log_model`, `mlflow.register_model` and
    `mlflow.pyfunc.load_model` take no store argument: they read the process-wide tracking URI
    (and the registry URI, which defaults to it). `mlflow.set_tracking_uri` also exports the
    URI to $MLFLOW_TRACKING_URI and `set_tracking_uri(None)` deletes that variable, so both
    the module's value and the variable are restored here, and a user's variable survives.
    """
    variable, previous = os.environ.get(URI_VARIABLE), mlflow_uri_state._tracking_uri
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop(URI_VARIABLE, None)
        else:
            os.environ[URI_VARIABLE] = variable


@functools.cache
def git_commit() -> str:
    """HEAD's commit hash (with '-dirty' when the tree has changes), or 'unknown'.

    Computed once per process (in the working directory of the first call): every run of a
    process records the same code."""
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
        Tag.STAGE: stage,
        Tag.METHOD: cfg.method,
        Tag.DATASET: params.dataset.name,
        Tag.GIT_COMMIT: git_commit(),
        Tag.PARAMS_HASH: params_hash,
        Tag.ROLE: Role.STAGE,
    }
    if cfg.teacher:
        tags[Tag.TEACHER] = cfg.teacher
    if parent_run_id:
        tags[Tag.PARENT_RUN] = parent_run_id
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
        Tag.PARENT_RUN: parent_run_id,
        Tag.STAGE: stage,
        Tag.METHOD: cfg.method,
        Tag.MODALITY: spec.modality,
        Tag.INIT: spec.init,
        Tag.PEERS: ",".join(peers) if cfg.method != "ce" else "",
        Tag.DATASET: params.dataset.name,
        Tag.GIT_COMMIT: git_commit(),
        Tag.PARAMS_HASH: params_hash,
        Tag.MODEL_INDEX: str(index),
        Tag.ROLE: Role.MODEL,
    }
    if cfg.teacher:
        tags[Tag.TEACHER] = cfg.teacher
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


def start_step(client: MlflowClient, experiment_id: str, params: Params, role: str) -> str:
    """Create the run of a one-off step (`Role.ENSEMBLE`, `REPORT`, `PROMOTE`); returns its id.

    The run is named after the step, which is also its stage, method and role."""
    tags = {
        Tag.STAGE: role,
        Tag.METHOD: role,
        Tag.DATASET: params.dataset.name,
        Tag.GIT_COMMIT: git_commit(),
        Tag.ROLE: role,
    }
    return client.create_run(experiment_id, run_name=role, tags=tags).info.run_id


def study_runs(client: MlflowClient, experiment_id: str, study: str) -> list[Run]:
    """The study runs of Optuna study `study` (one, unless two workers raced to create it)."""
    return list(client.search_runs([experiment_id], study_filter(study)))


def start_study(
    client: MlflowClient, experiment_id: str, params: Params, stage: str, study: str, storage: str
) -> str:
    """Create the run of Optuna study `study` of `stage` (`storage`: without password)."""
    tags = {
        Tag.ROLE: Role.STUDY,
        Tag.STUDY: study,
        Tag.STAGE: stage,
        Tag.METHOD: "tune",
        Tag.DATASET: params.dataset.name,
        Tag.GIT_COMMIT: git_commit(),
        Tag.OPTUNA_STORAGE: storage,
    }
    return client.create_run(experiment_id, run_name=f"tune {stage}", tags=tags).info.run_id


def model_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of registered model `name`; none when it is not registered."""
    try:
        return list(client.search_model_versions(versions_filter(name)))
    except MlflowException:
        return []


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version of registered model `name` with the champion alias, if any."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), MAX_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_BATCH])


def write_shared(write: Callable[[], Any], attempts: int = 5) -> None:
    """Run `write` against a run that other processes write at the same moment (a study run,
    which every `mml tune` worker of the study finishes by writing its best trial): the first
    inserts of one key race in a SQL store and one fails with an integrity error; written
    again, it finds the key and updates it."""
    for attempt in range(attempts):
        try:
            write()
            return
        except (MlflowException, SQLAlchemyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt)


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
