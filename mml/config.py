"""Configuration: pydantic models for `params.yaml`, the only place that reads it.

`load_params(path, overrides)` reads the YAML file, applies `-S key.path=value` overrides and
validates everything. Any problem becomes a `ConfigError` whose message names the file and the
key, so that the CLI can print one paragraph instead of a traceback. A stage's own `overrides`
(dotted keys into the global sections) are applied by `Params.for_stage`.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mml.errors import UserError

Modality = Literal["rgb", "flow", "diff"]
Method = Literal["ce", "ml", "mml", "mars", "d3d"]
Arch = Literal[
    "tsm_resnet18",
    "tsm_resnet50",
    "tsm_resnet101",
    "tsm_mobilenet_v2",
    "i3d_resnet18",
    "i3d_resnet50",
]
INIT_PATTERN = re.compile(r"^(imagenet|scratch|[A-Za-z0-9_\-]+\.\d+)$")
MODEL_REF = re.compile(r"^[A-Za-z0-9_\-]+\.\d+$")  # <stage>.<k>: model k of a trained stage


def _model_refs(v: tuple[str, ...]) -> tuple[str, ...]:
    bad = [r for r in v if not MODEL_REF.match(r)]
    if bad:
        raise ValueError(f"candidates must look like '<stage>.<k>', got {bad}")
    return v


ModelRefs = Annotated[tuple[str, ...], AfterValidator(_model_refs)]


class ConfigError(UserError, ValueError):
    """A params file or override is invalid; the message says where and what."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class DatasetConfig(Section):
    name: str = "synthetic"
    format: Literal["ssv2", "charades", "csv"] = "ssv2"
    root: Path = Path("data/raw/synthetic")
    video_dir: str = "videos"
    ext: str = ".webm"
    labels: str = "labels.json"
    train: str = "train.json"
    val: str = "validation.json"


class SynthConfig(Section):
    """`mml data synth`: what the synthetic generators (mml.data.synth) draw and write.

    The generators take this model itself. Field order is the key order of the datasets'
    spec.json (add new fields at the end, or existing datasets' spec.json bytes change).
    """

    seed: int = 1
    train_per_class: int = Field(48, ge=1)
    val_per_class: int = Field(50, ge=1)
    frames: tuple[int, int] = Field((20, 32), description="min, max frames per video")
    height: int = Field(32, ge=16)
    width: int = Field(32, ge=16)
    fps: float = Field(12.0, gt=0)
    codec: Literal["vp9", "vp8", "h264"] = "vp9"
    num_classes: int = Field(6, ge=2, le=14, description="the first N of the 14 classes")
    distractors: int = Field(1, ge=0, description="max distractors per video")
    jitter: float = Field(1.0, ge=0, description="camera shake std (px)")
    noise: float = Field(3.0, ge=0, description="pixel noise std (0..255)")
    exposure: float = Field(
        0.1, ge=0, le=0.5, description="auto-exposure drift: std of the log gain per frame (0: off)"
    )
    object_scale: float = Field(1.6, gt=0, le=3, description="multiplies every object's size")
    bright_objects: bool = Field(
        True, description="objects contrast with the background (light on dark or dark on light)"
    )
    dark_share: float = Field(0.5, ge=0, le=1, description="share of dark-object videos")
    texture: float = Field(0.3, ge=0, le=1, description="background contrast: 0 plain .. 1")
    object_texture: float = Field(0.0, ge=0, le=1, description="objects' surface texture")
    multilabel: bool = Field(False, description="Charades-like: several objects and actions")
    actions: tuple[int, int] = Field((1, 3), description="multilabel: min, max actions/video")

    @field_validator("height", "width")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even (VP9/H.264 store 4:2:0 colour), got {v}")
        return v

    @field_validator("actions")
    @classmethod
    def _actions_ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"need 1 <= min <= max, got {list(v)}")
        return v

    @field_validator("frames")
    @classmethod
    def _frames_ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= v[0] <= v[1]:
            raise ValueError(f"need 2 <= min <= max, got {list(v)}")
        return v


class ClipConfig(Section):
    segments: int = Field(4, ge=1, description="T: input frames per clip")
    sampling: Literal["uniform", "dense", "mixed"] = "mixed"
    mix: float = Field(0.5, ge=0, le=1, description="P(uniform) for mixed sampling")
    dense_stride: int | None = Field(None, ge=1, description="None: 32 // segments")
    scale_size: int = Field(32, ge=8, description="short side before cropping")
    crop_size: int = Field(28, ge=8)
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    max_distort: int = Field(1, ge=0)
    flip: bool = False

    @property
    def stride(self) -> int:
        return self.dense_stride or max(1, 32 // self.segments)


class CacheConfig(Section):
    root: Path = Field(Path("data/cache"), description="caches live in <root>/<dataset>/<kind>")
    flow_algorithm: Literal["tvl1", "dis"] = "tvl1"
    flow_bound: float = Field(4.0, gt=0, description="flow clipped to +-bound, then uint8")
    format: Literal["npy", "jpeg"] = Field(
        "npy", description="npy: exact; jpeg: about 15x smaller, within max_error steps"
    )
    diff_from_video: bool = Field(
        False,
        description="differences are not stored: computed from each clip's decoded frames when "
        "read (format video), exactly what a stored cache holds",
    )
    jpeg_quality: int = Field(95, ge=50, le=100, description="format jpeg: JPEG quality")
    max_error: int = Field(
        12, ge=0, le=255, description="format jpeg: largest error in uint8 steps (checked)"
    )


class LoaderConfig(Section):
    batch_size: int = Field(16, ge=1)
    workers: int = Field(1, ge=0)


class ModelConfig(Section):
    arch: Arch = "tsm_mobilenet_v2"
    width_mult: float = Field(0.5, gt=0, description="MobileNetV2 only")
    shift_div: int = Field(8, ge=2)
    dropout: float = Field(0.2, ge=0, lt=1)
    partial_bn: bool = False
    weights: str = Field("DEFAULT", description="torchvision weight enum member for init=imagenet")


class TrainConfig(Section):
    epochs: int = Field(12, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(0.003, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"
    lr_steps: tuple[int, ...] = ()
    lr_decay: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    clip_grad: float | None = Field(20.0, gt=0)
    val_every: int = Field(
        6, ge=1, description="validate after every N-th epoch, and always after the last"
    )

    def validates(self, epoch: int) -> bool:
        """Whether training validates after `epoch` (0-based)."""
        return (epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs


class EvalConfig(Section):
    dense_views: int = Field(1, ge=0)
    uniform_views: int = Field(2, ge=0)
    fuse: Literal["logits", "probs"] = "logits"
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _some_view(self) -> EvalConfig:
        if self.dense_views + self.uniform_views == 0:
            raise ValueError("dense_views + uniform_views must be at least 1")
        return self


class EnsembleConfig(Section):
    candidates: ModelRefs = Field((), description="'<stage>.<k>' models to combine; empty: all")
    sizes: tuple[int, ...] = (2, 3)
    distinct_modalities: bool = Field(True, description="one model per modality (paper App. 3)")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 2:
            raise ValueError(f"ensemble sizes must be >= 2, got {list(v)}")
        return v


class SearchParam(Section):
    """One dimension of an Optuna search space: a float/int range or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either choices (non-empty) or low and high, not both")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"need low < high (or choices), got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class PrunerConfig(Section):
    startup_trials: int = Field(3, ge=0, description="trials never pruned (median needs some)")
    warmup_epochs: int = Field(2, ge=0, description="epochs of a trial never pruned")


class PretrainConfig(Section):
    """`mml pretrain`: the synthetic default's stand-in for ImageNet weights (`init: pretrain.0`).

    The stage's architecture learns where the object is in still frames of the synthetic
    generator's own stream (mml.data.synth.stills), as static clips of `clip.segments` frames.
    """

    images: int = Field(4000, ge=2, description="stills rendered; a tenth is held out")
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.003, gt=0, description="AdamW peak learning rate (one cycle)")
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, description="the stills and the training; not `seed`: fixed weights")


class TuneConfig(Section):
    trials: int = Field(
        0, ge=0, description="total trials of the study (all workers together); 0: tuning off"
    )
    seed: int = 0
    storage: str | None = Field(
        None, description="SQLAlchemy URL (shared), or a journal file path; None: optuna/<dataset>"
    )
    epochs: int | None = Field(6, ge=1, description="epochs per trial; None: the stage's own")
    val_every: int = Field(
        2, ge=1, description="trials validate (and may be pruned) after every N-th epoch"
    )
    objective: Literal["first", "mean"] = Field(
        "first", description="val metric of model 0 (MML: the RGB model) or mean of the models"
    )
    pruner: PrunerConfig = PrunerConfig()
    space: dict[str, SearchParam] = Field(
        default_factory=lambda: {
            "stage.kl_weight": SearchParam(low=0.25, high=4.0, log=True),
            "clip.mix": SearchParam(low=0.0, high=1.0),
            "train.lr": SearchParam(low=0.001, high=0.01, log=True),
        },
        description="'stage.<field>' for the stage's own settings, else a dotted params key",
    )

    @field_validator("space")
    @classmethod
    def _known_keys(cls, v: dict[str, SearchParam]) -> dict[str, SearchParam]:
        for key in v:
            if key.startswith("stage."):
                name = key.removeprefix("stage.")
                if name not in TUNABLE_STAGE_FIELDS:
                    raise ValueError(f"{key!r}: tunable stage fields are {TUNABLE_STAGE_FIELDS}")
            elif key != "seed" and (
                key.split(".")[0] not in OVERRIDABLE_SECTIONS or "." not in key
            ):
                raise ValueError(
                    f"{key!r}: expected 'stage.<field>' or '<section>.<key>' with a section "
                    f"in {OVERRIDABLE_SECTIONS}"
                )
        return v


TUNABLE_STAGE_FIELDS = ("kl_weight", "distill_weight")
OVERRIDABLE_SECTIONS = ("clip", "loader", "model", "train", "evaluate")  # "<section>.<key>"


class PromoteConfig(Section):
    rgb_candidates: ModelRefs = Field(
        (), description="'<stage>.<k>' RGB models to choose from; empty: every evaluated one"
    )
    ensemble: Literal["best", "greedy"] = Field(
        "best", description="the top-ranked ensemble of metrics/ensembles.json, or greedy's"
    )
    timing_videos: int = Field(4, ge=1, description="val videos timed for CPU ms/video")


class ComputeConfig(Section):
    """Where training runs; only `precision` changes what a run computes (the fingerprint)."""

    nproc: int = Field(1, ge=1, description="`mml train` processes on this machine (DDP)")
    device: str = Field("auto", description="auto: cuda:<LOCAL_RANK> when available, else cpu")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend; auto: nccl on GPUs, gloo on CPU"
    )
    sync_bn: bool = Field(True, description="BatchNorm statistics over all processes' shards")
    precision: Literal["float32", "float64", "bf16", "fp16"] = Field(
        "float32",
        description="float64: slow, for exact comparisons (e.g. DDP vs 1 process); bf16/fp16: "
        "mixed precision (torch.autocast, weights and losses in float32; fp16 with a GradScaler)",
    )
    timeout_minutes: float = Field(30.0, gt=0, description="collective timeout (rank 0 logs)")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per process; None: this machine's CPUs shared among the nproc "
        "processes, less the loader's workers (at least 1)",
    )


class TrackingConfig(Section):
    uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI or sqlite:///mlruns")
    experiment: str | None = Field(None, description="None: mml-<dataset.name>")


class PathsConfig(Section):
    checkpoints: Path = Path("checkpoints")
    metrics: Path = Path("metrics")
    predictions: Path = Path("predictions")
    plots: Path = Path("plots")
    tuned: Path = Path("tuned")
    registry: Path = Path("registry")  # promoted.json: what `mml promote` registered
    optuna: Path = Path("optuna")


class ModelSpec(Section):
    modality: Modality = "rgb"
    init: str = "scratch"

    @field_validator("init")
    @classmethod
    def _init_form(cls, v: str) -> str:
        if not INIT_PATTERN.match(v):
            raise ValueError(f"init must be 'imagenet', 'scratch' or '<stage>.<k>', got {v!r}")
        return v


DISTILL_WEIGHTS = {"mars": 50.0, "d3d": 1.0}  # the MARS / D3D papers' weights


class StageConfig(Section):
    method: Method = "ce"
    models: tuple[ModelSpec, ...] = (ModelSpec(),)
    kl_weight: float = Field(1.0, ge=0, description="ml/mml: weight w of the mutual KL")
    kl_form: Literal["pairwise", "mean_logits"] = "pairwise"
    teacher: str | None = Field(None, description="mars/d3d: frozen teacher '<stage>.<k>'")
    distill_weight: float | None = Field(None, ge=0, description="mars/d3d; None: 50 / 1")
    overrides: dict[str, Any] = Field(default_factory=dict)

    @property
    def distill(self) -> float:
        """The weight of the MARS/D3D term (the method's paper value unless set)."""
        if self.distill_weight is not None:
            return self.distill_weight
        return DISTILL_WEIGHTS.get(self.method, 0.0)

    @model_validator(mode="after")
    def _method_needs(self) -> StageConfig:
        modalities = {m.modality for m in self.models}
        if self.method in ("ml", "mml") and len(self.models) < 2:
            raise ValueError(f"method {self.method!r} trains M >= 2 models together, got 1")
        if self.method == "ml" and len(modalities) > 1:
            raise ValueError(
                f"method 'ml' trains models of one modality, got {sorted(modalities)} "
                "(use method 'mml' for several modalities)"
            )
        if self.method == "mml" and len(modalities) < 2:
            raise ValueError(
                f"method 'mml' needs models of different modalities, got only {modalities.pop()!r}"
                " (use method 'ml' for one modality)"
            )
        if self.method in ("mars", "d3d"):
            if self.teacher is None or not MODEL_REF.match(self.teacher):
                raise ValueError(
                    f"method {self.method!r} needs teacher: '<stage>.<k>' (a trained model, "
                    f"e.g. flow_ce.0), got {self.teacher!r}"
                )
            if len(self.models) != 1:
                count = len(self.models)
                raise ValueError(f"method {self.method!r} trains one student, got {count}")
        elif self.teacher is not None:
            raise ValueError(f"teacher is used by methods mars and d3d only, not {self.method!r}")
        return self

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        if not v:
            raise ValueError("a stage needs at least one model")
        return v


class Params(Section):
    seed: int = 0
    dataset: DatasetConfig = DatasetConfig()
    synth: SynthConfig = SynthConfig()
    clip: ClipConfig = ClipConfig()
    cache: CacheConfig = CacheConfig()
    loader: LoaderConfig = LoaderConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    pretrain: PretrainConfig = PretrainConfig()
    tune: TuneConfig = TuneConfig()
    promote: PromoteConfig = PromoteConfig()
    compute: ComputeConfig = ComputeConfig()
    tracking: TrackingConfig = TrackingConfig()
    paths: PathsConfig = PathsConfig()
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    source: str = Field("params.yaml", exclude=True, description="where it was read from")

    def stage(self, name: str) -> StageConfig:
        if name not in self.stages:
            known = ", ".join(sorted(self.stages)) or "none"
            raise ConfigError(f"{self.source}: no stage {name!r} under 'stages' (known: {known}).")
        return self.stages[name]

    def for_stage(self, name: str) -> Params:
        """These params with the stage's `overrides` applied (validated like the file)."""
        overrides = self.stage(name).overrides
        if not overrides:
            return self
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            _set_dotted(raw, key, value, f"stages.{name}.overrides")
        raw["source"] = self.source
        return _validate(raw, f"{self.source} (stages.{name}.overrides)")

    def with_stage_values(self, name: str, values: dict[str, Any], where: str) -> Params:
        """These params with `values` set on stage `name` (validated; errors name `where`).

        A key `stage.<field>` sets the stage's own field (e.g. its KL weight); any other
        dotted key becomes one of the stage's `overrides` (e.g. `train.lr`).
        """
        self.stage(name)
        raw = self.model_dump(mode="json")
        stage = raw["stages"][name]
        for key, value in values.items():
            if key.startswith("stage."):
                stage[key.removeprefix("stage.")] = value
            else:
                stage.setdefault("overrides", {})[key] = value
        raw["source"] = self.source
        return _validate(raw, where)

    def flat(self) -> dict[str, Any]:
        """All params as a flat {dotted.key: value} dict (for MLflow)."""
        return _flatten(self.model_dump(mode="json", exclude={"stages"}))


def load_params(
    path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()
) -> Params:
    """Read, override (`key.path=value`, value parsed as YAML) and validate a params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (pass --params PATH).") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections.")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. train.epochs=3.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _set_dotted(raw, key.strip(), value, f"override {item!r}")
    raw["source"] = str(path)
    return _validate(raw, str(path))


def _validate(raw: dict[str, Any], where: str) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{where}: invalid params:\n  " + "\n  ".join(lines)) from None


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        hint = _suggest(loc)
        return f"{key}: unknown key{hint}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def _suggest(loc: list[str]) -> str:
    """' (did you mean X?)' for a mistyped key, using the section's known field names."""
    model: type[BaseModel] | None = Params
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        annotation = getattr(field, "annotation", None)
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        if model is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1) if model else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {key!r} goes through {part!r}, which is not a section.")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
