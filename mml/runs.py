"""Runs of the pipeline that a report compares: the workspace, other workspaces, DVC experiments.

A `Run` is one complete run of the pipeline (one seed): its per-model metrics and per-video
predictions, read by model ref ('<stage>.<k>') from wherever the run's files are:

- the workspace: metrics/ and predictions/ of the current directory (`paths` in params);
- another workspace (`mml report --also DIR`): DIR/metrics and DIR/predictions; DIR may also be
  a bare metrics directory (then the run has per-model metrics but no predictions);
- a DVC experiment (`--exp NAME`, `--all-exps`): the files at the experiment's git revision,
  read through `dvc.api.DVCFileSystem` (what `dvc.api.open(path, rev=NAME)` uses): predictions
  are DVC-cached outs found in the local cache. Metrics files may be absent there (they are
  `cache: false`, left to git, and git ignores metrics/ in this repository), so a model's
  metrics are computed from its predictions when its metrics file cannot be read.

The seed of a run is the `seed` of its params file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import fsspec
import yaml
from dvc.api import DVCFileSystem, exp_show
from dvc.exceptions import DvcException
from dvc.repo import Repo

from mml import artifacts
from mml.artifacts import ArtifactError, ModelMetrics, Predictions, StageMetrics
from mml.config import ConfigError, Params
from mml.metrics import summarize

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run's files: `root` on `fs` holds `metrics` and `predictions` (relative paths)."""

    name: str
    seed: int | None
    fs: fsspec.AbstractFileSystem
    root: str
    metrics: str = "metrics"
    predictions: str | None = "predictions"
    _members: dict[str, Predictions | None] = field(default_factory=dict, repr=False)
    _stages: dict[str, StageMetrics | None] = field(default_factory=dict, repr=False)
    _ensembles: dict | None = field(default=None, repr=False)

    def _path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def member(self, ref: str) -> Predictions | None:
        """Model `ref`'s validation predictions, or None when this run has none."""
        if ref not in self._members:
            self._members[ref] = self._read_member(ref)
        return self._members[ref]

    def _read_member(self, ref: str) -> Predictions | None:
        if not self.predictions:
            return None
        path = self._path(self.predictions, artifacts.predictions_file(ref))
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return artifacts.read_predictions(f, ref)

    def refs(self) -> list[str]:
        """Every model this run has predictions of, as '<stage>.<k>'."""
        if not self.predictions:
            return []
        pattern = self._path(self.predictions, artifacts.predictions_glob())
        return artifacts.predicted_refs(self.fs.glob(pattern))

    def has_results(self) -> bool:
        """Whether the run has any predictions or metrics file (a pipeline that ran)."""
        return bool(self.refs() or self.fs.glob(self._path(self.metrics, "*.json")))

    def _read_text(self, name: str) -> str | None:
        path = self._path(self.metrics, artifacts.metrics_path(Path(), name).as_posix())
        try:
            with self.fs.open(path, "r") as f:
                return f.read()
        except (OSError, DvcException):
            return None

    def stage_metrics(self, stage: str) -> StageMetrics | None:
        """metrics/<stage>.json as `mml evaluate` wrote it; None if absent or unreadable."""
        if stage not in self._stages:
            text = self._read_text(stage)
            try:
                self._stages[stage] = (
                    None if text is None else artifacts.parse_stage_metrics(text, stage)
                )
            except ArtifactError as err:
                log.warning("run %s: %s", self.name, err)
                self._stages[stage] = None
        return self._stages[stage]

    def ensembles(self) -> dict:
        """metrics/ensembles.json as `mml ensemble` wrote it; {} if absent or unreadable."""
        if self._ensembles is None:
            text = self._read_text(artifacts.ENSEMBLES)
            try:
                self._ensembles = json.loads(text) if text else {}
            except ValueError:
                self._ensembles = {}
        return self._ensembles

    def model_metrics(self, ref: str) -> dict[str, float] | None:
        """{"top1", "top5"} or {"mAP"} of model `ref`: its metrics file's entry, else computed
        from its predictions (the same numbers: `mml evaluate` writes both from one array)."""
        stage, k = artifacts.split_ref(ref)
        found = self.stage_metrics(stage)
        entry: ModelMetrics | None = found.models.get(k) if found else None
        if entry is not None:
            return entry.scores
        m = self.member(ref)
        return None if m is None else summarize(m.scores, m.targets, m.multilabel)


def workspace_run(params: Params, root: Path) -> Run:
    """The run whose files are under directory `root` (this workspace when it is the cwd)."""
    local = fsspec.filesystem("file")
    here = root.resolve() == Path.cwd().resolve()
    metrics, predictions = str(params.paths.metrics), str(params.paths.predictions)
    if not here and not (root / metrics).is_dir() and any(root.glob("*.json")):
        metrics, predictions = ".", None  # a bare metrics directory (of another seed)
    seed = params.seed if here else _seed(root / "params.yaml", local)
    name = "workspace" if here else str(root)
    return Run(name, seed, local, str(root.resolve()), metrics, predictions)


def experiment_run(params: Params, name: str) -> Run:
    """DVC experiment (or any git revision) `name` of the repository holding the workspace."""
    top = _repo_root()
    here = _posix(os.path.relpath(Path.cwd(), top))
    fs = DVCFileSystem(top, rev=name)
    try:
        seed = _seed(_posix(os.path.relpath(Path(params.source).resolve(), top)), fs)
    except DvcException as err:
        raise ConfigError(f"experiment {name!r}: {err}; `dvc exp list` names them.") from None
    return Run(name, seed, fs, here, str(params.paths.metrics), str(params.paths.predictions))


def all_experiments() -> list[str]:
    """The names of the finished DVC experiments based on HEAD (`dvc exp show`), oldest first."""
    done = [
        r
        for r in exp_show(_repo_root())
        if r.get("Experiment") and r.get("State") in (None, "Success")
    ]
    return [r["Experiment"] for r in reversed(done)]


def _repo_root() -> str:
    try:
        return Repo.find_root(".")
    except DvcException:
        raise ConfigError(
            f"{Path.cwd()} is not in a DVC repository: experiments (--exp, --all-exps) are "
            "read from the repository's git revisions."
        ) from None


def _posix(path: str) -> str:
    return Path(path).as_posix()


def _seed(path: str | Path, fs: fsspec.AbstractFileSystem) -> int | None:
    """The `seed` of a params file; None when there is no such file."""
    try:
        with fs.open(str(path), "r") as f:
            seed = (yaml.safe_load(f) or {}).get("seed")
    except FileNotFoundError:
        return None
    return seed if isinstance(seed, int) else None


def collect_runs(
    params: Params, also: list[Path] = (), exps: list[str] = (), *, workspace: bool = True
) -> list[Run]:
    """The runs a report compares: this workspace (unless told not, or when it has no results),
    the `also` directories and the DVC experiments `exps`; each once (`--also .` is the
    workspace)."""
    roots = [Path(".")] if workspace else []
    for root in map(Path, also):
        if not root.is_dir():
            raise ConfigError(f"--also {root}: no such directory (the root of a run's files)")
        roots.append(root)
    runs, seen = [], set()
    for root in roots:
        if root.resolve() not in seen:
            seen.add(root.resolve())
            runs.append(workspace_run(params, root))
    runs += [experiment_run(params, name) for name in dict.fromkeys(exps)]
    kept = []
    for run in runs:
        if run.has_results():
            kept.append(run)
        elif run.name != "workspace":
            where = f"{params.paths.predictions}/<stage>/<k>.npz or {params.paths.metrics}/*.json"
            raise ConfigError(f"run {run.name!r} has no {where}: did its pipeline run?")
    return kept
