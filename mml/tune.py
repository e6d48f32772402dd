"""Optuna study over a stage: seeded TPE, median pruning per epoch, nested MLflow runs.

`tune_stage` trains the stage once per trial with values drawn from `tune.space` (the stage's
KL weight, the uniform/dense mix, the learning rate, ...), reports the validation metric of
every validated epoch (`train.val_every`) to Optuna (which may prune the trial), and writes the
best values to `tuned/<stage>.yaml`; `mml train STAGE --tuned` trains with them.

Several `mml tune` processes on one storage (a journal file, or any SQLAlchemy URL) share the
study: Optuna hands out trial numbers atomically, every trial draws from a sampler seeded by
(tune.seed, trial number), and `tune.trials` bounds the whole study, not each worker.
MLflow: one study run (role `study`), each trial a nested run (role `stage`, tag `trial`) with
the trial's models nested under it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from mml import artifacts, seeds, tracking
from mml.artifacts import TunedValues
from mml.config import ConfigError, Params, SearchParam
from mml.fsio import atomic_write, sqlite_init_lock
from mml.train import Trainer

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialSeededTPE(BaseSampler):
    """TPE whose random stream depends on (seed, trial number) only.

    A plain `TPESampler(seed=s)` in each of two workers draws the same "random" start-up
    trials twice; seeding per trial number (unique in a study) keeps one worker's study
    reproducible and two workers' trials different.
    """

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self._current: tuple[int, TPESampler] | None = None

    def _tpe(self, trial: FrozenTrial) -> TPESampler:
        if self._current is None or self._current[0] != trial.number:
            sampler = TPESampler(
                seed=seeds.trial_sampler(self.seed, trial.number),
                n_startup_trials=self.n_startup_trials,
            )
            self._current = (trial.number, sampler)
        return self._current[1]

    def infer_relative_search_space(self, study, trial):
        return self._tpe(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._tpe(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe(trial).after_trial(study, trial, state, values)


@dataclass
class TuneResult:
    study: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    trials: dict[str, int]  # state name -> count
    ran: int  # trials this process ran
    tuned_file: Path | None


def storage_url(params: Params, override: str | None = None) -> str:
    """`--storage`, else `tune.storage`, else a journal file optuna/<dataset>.journal."""
    default = artifacts.study_journal(params.paths.optuna, params.dataset.name)
    return override or params.tune.storage or str(default)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for a SQLAlchemy URL (with heartbeats, so a dead worker's trial is
    failed), else a journal file (safe for several local processes)."""
    if "://" in url:
        with sqlite_init_lock(url):  # two workers on a new sqlite file: one creates the tables
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def study_name(params: Params, stage: str) -> str:
    return f"mml-{params.dataset.name}-{stage}"


def tune_stage(
    params: Params,
    stage: str,
    *,
    trials: int | None = None,
    storage: str | None = None,
    show_progress: bool = True,
) -> TuneResult:
    """Run trials until the study holds `trials` (default `tune.trials`) finished ones.

    With 0 trials tuning is off: an existing tuned/<stage>.yaml is left as it is (it may come
    from a manual run), else one with no values is written, so a pipeline stage has its output.
    """
    cfg, target = params.tune, params.tune.trials if trials is None else trials
    params.stage(stage)
    metric = _check_space(params, stage)
    url = storage_url(params, storage)
    name = study_name(params, stage)
    if target == 0:
        tuned_file = artifacts.tuned_path(params.paths.tuned, stage)
        if not tuned_file.exists():
            artifacts.write_tuned(tuned_file, TunedValues(stage, name, None, None, {}))
        return TuneResult(name, _redact(url), None, {}, {}, 0, tuned_file)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(url),
        sampler=TrialSeededTPE(cfg.seed, n_startup_trials=max(cfg.pruner.startup_trials, 2)),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner.startup_trials, n_warmup_steps=cfg.pruner.warmup_epochs
        ),
        direction="maximize",
        load_if_exists=True,
    )
    _fail_orphans(study)
    client, experiment_id = tracking.client_and_experiment(params)
    study_run = _study_run(client, experiment_id, params, stage, name, url)
    ran = 0
    while (trial := _next_trial(study, target)) is not None:
        _run_trial(params, stage, study, trial, metric, client, study_run, show_progress)
        ran += 1
    return _finish(params, stage, study, url, client, study_run, ran)


def _check_space(params: Params, stage: str) -> str:
    """Validate every search-space key against the stage now; return the metric name."""
    space = params.tune.space
    if not space:
        raise ConfigError(f"{params.source}: tune.space is empty; nothing to search.")
    midpoints = {key: _midpoint(p) for key, p in space.items()}
    trial_params = params.with_stage_values(stage, midpoints, f"{params.source} (tune.space)")
    trial_params.for_stage(stage)

    return artifacts.dataset_metric(params.dataset)


def _midpoint(p: SearchParam) -> Any:
    if p.choices is not None:
        return p.choices[0]
    value = (p.low + p.high) / 2
    return round(value) if p.integer else value


def _suggest(trial: optuna.Trial, key: str, p: SearchParam) -> Any:
    if p.choices is not None:
        return trial.suggest_categorical(key, list(p.choices))
    if p.integer:
        return trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(key, p.low, p.high, log=p.log)


def _next_trial(study: optuna.Study, target: int) -> optuna.Trial | None:
    """A new trial, or None once `target` trials are finished or running (in any worker)."""

    def busy(before: int | None = None) -> int:
        states = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
        return sum(
            t.state in states and (before is None or t.number < before)
            for t in study.get_trials(deepcopy=False)
        )

    if busy() >= target:
        return None
    trial = study.ask()
    if busy(before=trial.number) >= target:  # another worker took the last slot meanwhile
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    return trial


def _fail_orphans(study: optuna.Study) -> None:
    """Mark as failed the running trials of dead processes on this host (e.g. after kill -9).

    RDB storages do this themselves through heartbeats; journal files need it here."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid and not _alive(int(pid)):
            log.warning("trial %d of a dead process (pid %s) marked failed", t.number, pid)
            study.tell(t.number, state=TrialState.FAIL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _study_run(client, experiment_id: str, params: Params, stage: str, name: str, url: str) -> str:
    """The one MLflow run of the study (shared by every worker using the same store)."""

    def first() -> str | None:  # the same choice in every worker: earliest, then smallest id
        runs = tracking.study_runs(client, experiment_id, name)
        return min(((r.info.start_time, r.info.run_id) for r in runs), default=(0, None))[1]

    if (found := first()) is not None:
        return found
    run_id = tracking.start_study(client, experiment_id, params, stage, name, _redact(url))
    tune = params.tune
    tracking.log_params(
        client,
        run_id,
        {
            "tune.seed": tune.seed,
            "tune.epochs": tune.epochs,
            "tune.val_every": tune.val_every,
            "tune.objective": tune.objective,
            **{f"space.{k}": v.model_dump(exclude_none=True) for k, v in tune.space.items()},
        },
    )
    # two workers starting together may both have created one: all keep the same one
    found = first() or run_id
    if found != run_id:
        client.delete_run(run_id)
    return found


def _redact(url: str) -> str:
    """The storage URL without a password (it goes into MLflow tags)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _run_trial(params, stage, study, trial, metric, client, study_run, show_progress) -> None:
    """Train the stage with the trial's values; tell Optuna the result (or the pruning)."""

    values = {key: _suggest(trial, key, p) for key, p in params.tune.space.items()}
    duplicate = _same_params(study, trial, values)
    if duplicate is not None:  # the sampler repeated itself: reuse the result
        trial.set_user_attr("duplicate_of", duplicate.number)
        study.tell(trial, duplicate.value)
        return
    fixed = {"train.val_every": params.tune.val_every}  # the pruner needs validated epochs
    if params.tune.epochs:
        fixed["train.epochs"] = params.tune.epochs
    trial_params = params.with_stage_values(stage, values | fixed, f"tune trial {trial.number}")
    out_dir = artifacts.trial_dir(params.paths.optuna, study.study_name, trial.number)
    shutil.rmtree(out_dir, ignore_errors=True)
    trainer = Trainer(trial_params, stage, show_progress=show_progress, out_dir=out_dir)
    key = f"val/{metric}"

    def report(epoch: int, rows: list[dict[str, float]]) -> None:
        trial.report(_objective(rows, key, params.tune.objective), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch + 1}")

    try:
        final = trainer.run(
            restart=True,
            on_epoch=report,
            parent_run_id=study_run,
            run_tags=tracking.trial_tags(study.study_name, trial.number),
            run_name=tracking.trial_run_name(stage, trial.number),
        )
    except optuna.TrialPruned:
        trainer.end_runs(client)
        client.set_tag(trainer.parent_run_id, tracking.Tag.OPTUNA_STATE, TrialState.PRUNED.name)
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned: %s", trial.number, values)
        return
    except Exception:
        if trainer.parent_run_id:
            trainer.end_runs(client, "FAILED")
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # trials keep their numbers in MLflow only
    value = _objective(final, key, params.tune.objective)
    client.set_tag(trainer.parent_run_id, tracking.Tag.OPTUNA_STATE, TrialState.COMPLETE.name)
    tracking.log_metrics(client, trainer.parent_run_id, {f"objective/{metric}": value})
    study.tell(trial, value)
    log.info("trial %d: %s %.2f with %s", trial.number, metric, value, values)


def _objective(rows: list[dict[str, float]], key: str, how: str) -> float:
    if how == "first":
        return float(rows[0][key])
    return float(sum(r[key] for r in rows) / len(rows))


def _same_params(study: optuna.Study, trial: optuna.Trial, values: dict) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == values:
            return t
    return None


def _finish(params, stage, study, url, client, study_run, ran) -> TuneResult:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    tuned_file = None
    best_value, best_params = None, {}
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        best_value, best_params = best.value, dict(best.params)
        tuned_file = artifacts.tuned_path(params.paths.tuned, stage)
        tuned = TunedValues(stage, study.study_name, best.number, best.value, dict(best.params))
        artifacts.write_tuned(tuned_file, tuned)
        # every worker of the study writes its view of the best trial to the shared study run,
        # possibly at the same moment; as tags, a later (more complete) view replaces it
        best_tags = {tracking.Tag.BEST_TRIAL: str(best.number)}
        best_tags |= {
            f"{tracking.Tag.BEST_VALUE_PREFIX}{k}": str(v) for k, v in best.params.items()
        }
        tracking.write_shared(
            lambda: tracking.log_metrics(client, study_run, {"best/value": best.value})
        )
        for key, value in best_tags.items():
            tracking.write_shared(
                lambda key=key, value=value: client.set_tag(study_run, key, value)
            )
        plot = artifacts.tune_plot(params.paths.plots, stage)
        plot_history(study, plot)
        tracking.log_artifacts(client, study_run, [tuned_file, plot], "tuning")
    return TuneResult(
        study.study_name, _redact(url), best_value, best_params, counts, ran, tuned_file
    )


def with_tuned(params: Params, stage: str) -> Params:
    """`params` with the tuned values of `stage` applied (validated like params.yaml)."""
    path = artifacts.tuned_path(params.paths.tuned, stage)
    return params.with_stage_values(stage, artifacts.read_tuned(path, stage).values, str(path))


def plot_history(study: optuna.Study, path: Path) -> None:
    """Objective per trial (pruned trials at their last report) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for state, colour in ((TrialState.COMPLETE, "tab:blue"), (TrialState.PRUNED, "tab:gray")):
        points = [
            (
                t.number,
                t.value
                if t.value is not None
                else t.intermediate_values.get(t.last_step, float("nan")),
            )
            for t in trials
            if t.state == state
        ]
        if points:
            ax.scatter(*zip(*points, strict=True), color=colour, label=state.name.lower(), s=18)
    complete = sorted((t.number, t.value) for t in trials if t.state == TrialState.COMPLETE)
    if complete:
        best, xs, ys = float("-inf"), [], []
        for number, value in complete:
            best = max(best, value)
            xs.append(number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
