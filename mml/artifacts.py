"""The pipeline's files: where each one lives and what it holds. Every reader and writer of
them goes through this module.

Under the directories of `paths` in params (a model is referred to as '<stage>.<k>')::

    checkpoints/<stage>/<k>.pt       model k of a stage (mml.checkpoint payload: weights + meta)
    checkpoints/<stage>/last.pt      the stage's resumable training state
    metrics/<stage>.json             StageMetrics: the test views, and `models` {k: ModelMetrics}
    predictions/<stage>/<k>.npz      Predictions of model k on the validation split
    metrics/ensembles.json (+ .md)   the ensemble ranking of `mml ensemble`
    tuned/<stage>.yaml               TunedValues: the best trial of `mml tune STAGE`
    optuna/<dataset>.journal         the default Optuna storage; optuna/trials/<study>/<n>/
    registry/promoted.json           what `mml promote` decided
    plots/<stage>/eval/confusion_<k>.png, plots/<stage>/curves/<k>.csv, plots/tune/<stage>.png

and a model package (what `mml promote` registers): mml-model.json and one <ref>.pt per member.

It also holds the one decision of which metric a dataset reports (`dataset_metric`): mAP for a
multi-label dataset (Charades), top-1 otherwise.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, BinaryIO, Literal

import numpy as np
import yaml

from mml.config import ConfigError, DatasetConfig
from mml.errors import UserError
from mml.fsio import atomic_write, atomic_write_text

MetricName = Literal["top1", "mAP"]
SCORE_KEYS = ("top1", "top5", "mAP")  # what metrics.summarize can return
ENSEMBLES = "ensembles"  # metrics/ensembles.json: not a stage's metrics
PRETRAIN = "pretrain"  # `mml pretrain`: checkpoints/pretrain/0.pt, metrics/pretrain.json
PACKAGE_CONFIG = "mml-model.json"


class ArtifactError(UserError):
    """A pipeline file is malformed or of an older layout; the message says which and why."""


# ---- the metric ------------------------------------------------------------------------------
def headline_metric(multilabel: bool) -> MetricName:
    """The metric results are ranked and compared by: mAP for multi-label data, else top-1."""
    return "mAP" if multilabel else "top1"


def dataset_metric(dataset: DatasetConfig) -> MetricName:
    """The metric the configured dataset reports (its format says whether it is multi-label)."""
    return headline_metric(dataset.format == "charades")


# ---- model references and checkpoints --------------------------------------------------------
def split_ref(ref: str) -> tuple[str, int]:
    """('<stage>', k) of a model reference '<stage>.<k>'."""
    stage, dot, k = ref.rpartition(".")
    if not dot or not stage or not k.isdigit():
        raise ConfigError(f"{ref!r} is not a model reference '<stage>.<k>' (e.g. rgb_ce.0)")
    return stage, int(k)


def base_init(init: str) -> bool:
    """Whether a model's `init` is a base: scratch, ImageNet or its stand-in `pretrain.<k>`
    (no model trained on the dataset; the paper's "from ImageNet" rows)."""
    return init in ("scratch", "imagenet") or init.startswith(f"{PRETRAIN}.")


def model_ref(stage: str, k: int) -> str:
    return f"{stage}.{k}"


def checkpoint_dir(checkpoints: Path, stage: str) -> Path:
    """checkpoints/<stage>: the models and training state of a stage."""
    return Path(checkpoints) / stage


def checkpoint_path(checkpoints: Path, ref: str) -> Path:
    """checkpoints/<stage>/<k>.pt of model `ref`."""
    stage, k = split_ref(ref)
    return stage_checkpoint(checkpoint_dir(checkpoints, stage), k)


def stage_checkpoint(out_dir: Path, k: int) -> Path:
    """Model k's checkpoint in a stage's checkpoint directory (or a tuning trial's)."""
    return Path(out_dir) / f"{k}.pt"


def last_checkpoint(out_dir: Path) -> Path:
    """The resumable training state in a stage's checkpoint directory."""
    return Path(out_dir) / "last.pt"


def model_checkpoints(out_dir: Path) -> list[Path]:
    """The models' checkpoints <k>.pt in a stage's checkpoint directory (not last.pt)."""
    return sorted(p for p in Path(out_dir).glob("*.pt") if p.stem.isdigit())


# ---- metrics ---------------------------------------------------------------------------------
def metrics_path(metrics: Path, name: str) -> Path:
    """metrics/<name>.json: a stage's StageMetrics, or the ensemble ranking (ENSEMBLES)."""
    return Path(metrics) / f"{name}.json"


@dataclass(frozen=True)
class ModelMetrics:
    """One model's multi-view test: its scores (top1 and top5, or mAP) and per-class top-1;
    `run_id`: the MLflow run that trained it (its checkpoint's), "" when unknown."""

    modality: str
    init: str
    scores: dict[str, float]
    per_class_top1: dict[str, float | None] | None = None
    run_id: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"modality": self.modality, "init": self.init, **self.scores}
        if self.per_class_top1 is not None:
            data["per_class_top1"] = self.per_class_top1
        if self.run_id:
            data["run_id"] = self.run_id
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMetrics:
        return cls(
            data["modality"],
            data.get("init", ""),
            {k: float(data[k]) for k in SCORE_KEYS if k in data},
            data.get("per_class_top1"),
            data.get("run_id", ""),
        )


@dataclass(frozen=True)
class StageMetrics:
    """metrics/<stage>.json: how the stage's models were tested, and each model's metrics."""

    views: str
    fuse: str
    skipped: list[str] = field(default_factory=list)
    models: dict[int, ModelMetrics] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "views": self.views,
            "fuse": self.fuse,
            "skipped": sorted(self.skipped),
            "models": {str(k): m.to_json() for k, m in sorted(self.models.items())},
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> StageMetrics:
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ArtifactError(
                f"{source}: not a stage's metrics (no 'models'); it may be of an older mml: "
                "run `mml evaluate` for the stage again."
            )
        try:
            models = {int(k): ModelMetrics.from_json(m) for k, m in data["models"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{source}: malformed model entry ({err!r})") from None
        return cls(
            data.get("views", ""), data.get("fuse", ""), list(data.get("skipped", [])), models
        )


def write_stage_metrics(path: Path, metrics: StageMetrics) -> None:
    atomic_write_text(path, json.dumps(metrics.to_json(), indent=2) + "\n")


def read_stage_metrics(path: Path) -> StageMetrics:
    """A stage's metrics file (ConfigError when missing, ArtifactError when malformed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is missing; run `mml evaluate {path.stem}`.")
    return parse_stage_metrics(path.read_text(encoding="utf-8"), str(path))


def parse_stage_metrics(text: str, source: str) -> StageMetrics:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ArtifactError(f"{source}: not JSON ({err})") from None
    return StageMetrics.from_json(data, source)


def evaluated_stages(metrics: Path) -> list[str]:
    """The stages with a metrics file in the metrics directory (every JSON but the ensembles'
    and the pretraining's)."""
    names = (p.stem for p in Path(metrics).glob("*.json"))
    return sorted(name for name in names if name not in (ENSEMBLES, PRETRAIN))


def evaluated_models(metrics: Path, stages: Iterable[str]) -> dict[str, ModelMetrics]:
    """{ref: metrics} of every model of `stages` whose metrics file exists, by ref."""
    found = {}
    for stage in stages:
        path = metrics_path(metrics, stage)
        if path.is_file():
            for k, m in read_stage_metrics(path).models.items():
                found[model_ref(stage, k)] = m
    return dict(sorted(found.items()))


def write_json(path: Path, data: Any) -> None:
    """Any other JSON result file (ensemble ranking, promotion record), atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        raise ArtifactError(f"{path}: not JSON ({err})") from None


# ---- predictions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Predictions:
    """One model's (or ensemble's) validation predictions, row i for video ids[i]."""

    ref: str
    modality: str
    scores: np.ndarray  # (videos, classes) probabilities
    targets: np.ndarray  # (videos,) class indices, or (videos, classes) 0/1 when multi-label
    ids: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2

    @property
    def metric(self) -> MetricName:
        return headline_metric(self.multilabel)


def predictions_file(ref: str) -> str:
    """'<stage>/<k>.npz': where model `ref`'s predictions are, under the predictions directory."""
    stage, k = split_ref(ref)
    return f"{stage}/{k}.npz"


def predictions_path(predictions: Path, ref: str) -> Path:
    return Path(predictions) / predictions_file(ref)


def write_predictions(path: Path, p: Predictions) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                scores=p.scores,
                targets=p.targets,
                ids=np.array(p.ids),
                classes=np.array(list(p.classes)),
                modality=np.array(p.modality),
            )

    atomic_write(path, save)


def read_predictions(file: BinaryIO, ref: str) -> Predictions:
    """Model `ref`'s predictions from an open <stage>/<k>.npz (local file or DVC's)."""
    with np.load(io.BytesIO(file.read())) as npz:
        return Predictions(
            ref,
            str(npz["modality"]) if "modality" in npz else "?",
            npz["scores"],
            npz["targets"],
            tuple(npz["ids"].tolist()),
            tuple(npz["classes"].tolist()),
        )


def load_predictions(predictions: Path, ref: str) -> Predictions:
    """Model `ref`'s predictions from the predictions directory (ConfigError when missing)."""
    path = predictions_path(predictions, ref)
    if not path.is_file():
        stage, _ = split_ref(ref)
        raise ConfigError(f"{ref}: {path} is missing; run `mml evaluate {stage}`.")
    with open(path, "rb") as f:
        return read_predictions(f, ref)


def predicted_refs(paths: Iterable[str | PurePath]) -> list[str]:
    """The refs of the .../<stage>/<k>.npz among `paths`, by stage then k."""
    found = [(p.parent.name, int(p.stem)) for p in map(PurePath, paths) if p.stem.isdigit()]
    return [model_ref(stage, k) for stage, k in sorted(found)]


def predictions_glob() -> str:
    """The pattern of every model's predictions file under the predictions directory."""
    return "*/*.npz"


# ---- plots -----------------------------------------------------------------------------------
def confusion_plot(plots: Path, ref: str) -> Path:
    stage, k = split_ref(ref)
    return Path(plots) / stage / "eval" / f"confusion_{k}.png"


def curves_dir(plots: Path, stage: str) -> Path:
    return Path(plots) / stage / "curves"


# ---- tuned values ----------------------------------------------------------------------------
def tuned_path(tuned: Path, stage: str) -> Path:
    return Path(tuned) / f"{stage}.yaml"


def study_journal(optuna: Path, dataset: str) -> Path:
    """The default Optuna storage of a dataset's studies (a journal file)."""
    return Path(optuna) / f"{dataset}.journal"


def trial_dir(optuna: Path, study: str, number: int) -> Path:
    """A tuning trial's checkpoints and curves (removed when the trial ends)."""
    return Path(optuna) / "trials" / study / str(number)


def tune_plot(plots: Path, stage: str) -> Path:
    return Path(plots) / "tune" / f"{stage}.png"


@dataclass(frozen=True)
class TunedValues:
    """tuned/<stage>.yaml: the best trial's values (none: tuning was off)."""

    stage: str
    study: str
    trial: int | None
    value: float | None
    values: dict[str, Any]


def write_tuned(path: Path, tuned: TunedValues) -> None:
    data = {
        "stage": tuned.stage,
        "study": tuned.study,
        "trial": tuned.trial,
        "value": tuned.value,
        "values": tuned.values,
    }
    header = f"# written by `mml tune {tuned.stage}`; used by `mml train {tuned.stage} --tuned`\n"
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def read_tuned(path: Path, stage: str) -> TunedValues:
    """tuned/<stage>.yaml (clear errors when missing, malformed or for another stage)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no tuned values for stage {stage!r}; run `mml tune {stage}`.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
        raise ConfigError(f"{path}: expected a mapping with 'values' (written by `mml tune`).")
    if data.get("stage") != stage:
        raise ConfigError(f"{path}: holds values for stage {data.get('stage')!r}, not {stage!r}.")
    return TunedValues(
        stage, str(data.get("study", "")), data.get("trial"), data.get("value"), data["values"]
    )


# ---- promotion and model packages ------------------------------------------------------------
def promoted_path(registry: Path) -> Path:
    return Path(registry) / "promoted.json"


def package_config(root: Path) -> Path:
    """A model package's description (kind, classes, views, fusion, flow, members)."""
    return Path(root) / PACKAGE_CONFIG


PACKAGE_FORMAT = 1


@dataclass(frozen=True)
class PackageConfig:
    """mml-model.json: what a model package predicts with. Members are (ref, modality); each
    one's checkpoint is the file `package_member(ref)` beside it."""

    kind: str  # rgb | ensemble
    classes: tuple[str, ...]
    multilabel: bool
    views: tuple[int, int]  # dense, uniform
    fuse: str  # logits | probs
    short_side: int | None
    flow_algorithm: str
    flow_bound: float
    members: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PACKAGE_FORMAT,
            "kind": self.kind,
            "classes": list(self.classes),
            "multilabel": self.multilabel,
            "views": {"dense": self.views[0], "uniform": self.views[1]},
            "fuse": self.fuse,
            "short_side": self.short_side,
            "flow": {"algorithm": self.flow_algorithm, "bound": self.flow_bound},
            "members": [
                {"ref": ref, "modality": modality, "file": package_member(ref)}
                for ref, modality in self.members
            ],
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> PackageConfig:
        """Every field checked: a package may come from anywhere (a registry, a download)."""

        def bad(key: str, wanted: str) -> ArtifactError:
            return ArtifactError(f"{source}: {key} must be {wanted}")

        if not isinstance(data, dict):
            raise bad("the file", "a JSON object")
        if data.get("format") != PACKAGE_FORMAT:
            raise ArtifactError(
                f"{source}: model package format {data.get('format')!r}, need {PACKAGE_FORMAT}"
            )
        classes, views, flow = data.get("classes"), data.get("views"), data.get("flow")
        if (
            not isinstance(classes, list)
            or not classes
            or not all(isinstance(c, str) for c in classes)
        ):
            raise bad("classes", "a non-empty list of strings")
        if (
            not isinstance(views, dict)
            or not all(
                isinstance(views.get(k), int) and views[k] >= 0 for k in ("dense", "uniform")
            )
            or views["dense"] + views["uniform"] == 0
        ):
            raise bad("views", "{dense, uniform}: counts >= 0, not both 0")
        if not isinstance(flow, dict) or not isinstance(flow.get("algorithm"), str):
            raise bad("flow", "{algorithm, bound}")
        if not isinstance(flow.get("bound"), int | float) or flow["bound"] <= 0:
            raise bad("flow.bound", "a positive number")
        short = data.get("short_side")
        if short is not None and (not isinstance(short, int) or short <= 0):
            raise bad("short_side", "a positive integer or null")
        if data.get("kind") not in ("rgb", "ensemble"):
            raise bad("kind", "rgb or ensemble")
        if data.get("fuse") not in ("logits", "probs"):
            raise bad("fuse", "logits or probs")
        if not isinstance(data.get("multilabel"), bool):
            raise bad("multilabel", "true or false")
        members = data.get("members")
        if not isinstance(members, list) or not members:
            raise bad("members", "a non-empty list")
        pairs = []
        for m in members:
            if not isinstance(m, dict) or not all(
                isinstance(m.get(k), str) for k in ("ref", "modality")
            ):
                raise bad("members", "a list of {ref, modality, file}")
            if m.get("file", package_member(m["ref"])) != package_member(m["ref"]):
                raise bad(f"member {m['ref']!r}'s file", f"{package_member(m['ref'])!r}")
            pairs.append((m["ref"], m["modality"]))
        return cls(
            data["kind"],
            tuple(classes),
            data["multilabel"],
            (views["dense"], views["uniform"]),
            data["fuse"],
            short,
            flow["algorithm"],
            float(flow["bound"]),
            tuple(pairs),
        )


def write_package_config(root: Path, config: PackageConfig) -> None:
    write_json(package_config(root), config.to_json())


def read_package_config(root: Path) -> PackageConfig:
    path = package_config(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{root}: not an mml model package ({err})") from None
    return PackageConfig.from_json(data, str(path))


def package_member(ref: str) -> str:
    """The file name of member `ref`'s checkpoint inside a model package (a plain file name:
    a package read from elsewhere cannot point outside its directory)."""
    split_ref(ref)
    name = f"{ref}.pt"
    if PurePath(name).name != name or name.startswith(".") or "\\" in name:
        raise ArtifactError(f"{ref!r}: not a model reference usable as a file name")
    return name
