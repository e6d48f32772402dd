"""`mml promote`: register the best single RGB model and the best ensemble in MLflow.

Candidates come from the evaluation files: the RGB model with the best validation metric in
metrics/<stage>.json, and the top (or greedy) ensemble of metrics/ensembles.json. Each is
packaged (mml.predictor), logged as an MLflow pyfunc (mml/serving.py, "models from code", so
loading unpickles nothing) and registered as `mml-<dataset>-rgb` / `mml-<dataset>-ensemble`.

A version is identified by a fingerprint of its checkpoints and inference settings, so
promoting twice registers nothing new. The alias `champion` moves only to a version whose
validation metric beats the current champion's (or with `force`). Versions are created with
all their tags in one call, then the alias moves: a promotion killed at any point leaves
either no version or a complete one, and running it again finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mml import artifacts, checkpoint, tracking
from mml.config import ConfigError, Params
from mml.data.dataset import load_split
from mml.data.sampling import ViewPlan
from mml.data.video import VideoDecodeError, probe
from mml.fsio import file_hash
from mml.predictor import VideoPredictor, time_predictions, write_package
from mml.tracking import VersionTag

log = logging.getLogger(__name__)
# The pyfunc MLflow stores with every registered version ("models from code")
SERVING_CODE = Path(__file__).with_name("serving.py")


@dataclass
class Decision:
    """What promoting one candidate does (or, in a dry run, would do)."""

    name: str
    kind: str  # rgb | ensemble
    members: list[str]
    metric: str
    value: float
    metrics: dict[str, float]
    fingerprint: str
    version: str | None = None  # existing or newly registered version
    register: bool = False
    move_alias: bool = False
    champion: str | None = None  # the champion version before this promotion
    champion_value: float | None = None
    reason: str = ""
    timing: dict[str, float] = field(default_factory=dict)


def promote(params: Params, *, force: bool = False, dry_run: bool = False) -> list[Decision]:
    """Register (if new) and crown (if better, or `force`) the best RGB model and ensemble."""
    client, experiment_id = tracking.client_and_experiment(params)
    settings = package_settings(params)
    decisions = [_decide(client, params, settings, *best_rgb(params), force=force)]
    ensemble = best_ensemble(params)
    if ensemble is not None:
        decisions.append(_decide(client, params, settings, *ensemble, force=force))
    if dry_run:
        return decisions
    run_id = None
    for d in decisions:
        if d.register:
            run_id = run_id or tracking.start_step(
                client, experiment_id, params, tracking.Role.PROMOTE
            )
            d.version, d.timing = _register(client, params, settings, d, run_id)
        if d.move_alias:
            client.set_registered_model_alias(d.name, tracking.CHAMPION, d.version)
            log.info("%s: alias %s -> version %s", d.name, tracking.CHAMPION, d.version)
    if run_id:
        tracking.end_run(client, run_id)
    out = artifacts.promoted_path(params.paths.registry)
    artifacts.write_json(out, {d.kind: _summary(d) for d in decisions})
    return decisions


# ---- candidates ------------------------------------------------------------------------------
def best_rgb(params: Params) -> tuple[str, list[str], str, dict[str, float]]:
    """('rgb', [ref], metric, metrics) of the best evaluated RGB model (ties: first ref)."""
    metrics_dir = params.paths.metrics
    evaluated = artifacts.evaluated_models(metrics_dir, artifacts.evaluated_stages(metrics_dir))
    rows = [(ref, m) for ref, m in evaluated.items() if m.modality == "rgb"]
    wanted = params.promote.rgb_candidates
    if wanted:
        missing = sorted(set(wanted) - {ref for ref, _ in rows})
        if missing:
            raise ConfigError(
                f"promote.rgb_candidates {missing}: not evaluated RGB models in "
                f"{params.paths.metrics}; run `mml evaluate STAGE` first."
            )
        rows = [(ref, e) for ref, e in rows if ref in wanted]
    if not rows:
        raise ConfigError(
            f"no evaluated RGB model in {params.paths.metrics}; run `mml evaluate STAGE` first."
        )
    metric = artifacts.dataset_metric(params.dataset)
    # rows are by ref, so that ties go to the first ref: max keeps the first of equals
    ref, entry = max(rows, key=lambda r: r[1].scores[metric])
    return "rgb", [ref], metric, dict(entry.scores)


def best_ensemble(params: Params) -> tuple[str, list[str], str, dict[str, float]] | None:
    """The top-ranked (or greedy) ensemble of metrics/ensembles.json; None without that file."""
    path = artifacts.metrics_path(params.paths.metrics, artifacts.ENSEMBLES)
    if not path.is_file():
        log.warning("%s missing: run `mml ensemble` to promote an ensemble too", path)
        return None
    report = artifacts.read_json(path)
    key = "greedy_best" if params.promote.ensemble == "greedy" else "best"
    if key not in report:
        raise ConfigError(f"{path} has no {key!r} entry; run `mml ensemble` again.")
    best = report[key]
    if len(best["members"]) < 2:
        log.warning(
            "the %s ensemble is a single model; no ensemble promoted", params.promote.ensemble
        )
        return None
    return "ensemble", list(best["members"]), report["metric"], _metrics(best)


def _metrics(entry: dict) -> dict[str, float]:
    return {k: float(entry[k]) for k in artifacts.SCORE_KEYS if k in entry}


# ---- decisions -------------------------------------------------------------------------------
def _decide(client, params, settings, kind, members, metric, metrics, *, force: bool) -> Decision:
    name = tracking.registered_model_name(params, kind)
    d = Decision(
        name,
        kind,
        members,
        metric,
        metrics[metric],
        metrics,
        fingerprint(params, members, settings),
    )
    versions = tracking.model_versions(client, name)
    same = [v for v in versions if v.tags.get(VersionTag.FINGERPRINT) == d.fingerprint]
    champion = tracking.champion_version(client, name)
    if champion is not None:
        d.champion = str(champion.version)
        d.champion_value = float(champion.tags.get(VersionTag.val(metric), "nan"))
    d.version = str(same[0].version) if same else None
    d.register = not same
    if d.version is not None and d.version == d.champion:
        d.reason = f"version {d.version} is already the {tracking.CHAMPION}"
    elif champion is None:
        d.move_alias, d.reason = True, f"no {tracking.CHAMPION} yet"
    elif force:
        d.move_alias, d.reason = True, f"forced over version {d.champion}"
    elif d.champion_value is None or not d.value > d.champion_value:
        d.reason = (
            f"{metric} {d.value:.2f} does not beat {tracking.CHAMPION} version {d.champion} "
            f"({d.champion_value:.2f}); --force to crown it anyway"
        )
    else:
        d.move_alias = True
        d.reason = f"{metric} {d.value:.2f} beats version {d.champion} ({d.champion_value:.2f})"
    return d


def fingerprint(params: Params, members: list[str], settings: dict) -> str:
    """Hash of the members' checkpoints, the inference `settings` of a package and the
    pyfunc's code (mml/serving.py is stored with each version: new code is a new version)."""

    digest = hashlib.sha256()
    digest.update(json.dumps(_inference_settings(settings), sort_keys=True).encode())
    digest.update(file_hash(SERVING_CODE).encode())
    for ref in members:
        path = artifacts.checkpoint_path(params.paths.checkpoints, ref)
        if not path.is_file():
            raise ConfigError(f"{ref}: {path} is missing; train the stage first.")
        digest.update(ref.encode())
        digest.update(file_hash(path).encode())
    return digest.hexdigest()[:20]


def package_settings(params: Params) -> dict:
    """`write_package`'s inference settings (views, fusion, input size, flow) from `params`."""

    e, c = params.evaluate, params.cache
    return {
        "views": ViewPlan(e.dense_views, e.uniform_views),
        "fuse": e.fuse,
        "short_side": short_side(params),
        "flow_algorithm": c.flow_algorithm,
        "flow_bound": c.flow_bound,
    }


def _inference_settings(s: dict) -> dict:
    """The part of `package_settings` that is hashed (kept stable: old versions match)."""
    return {
        "views": [s["views"].dense, s["views"].uniform],
        "fuse": s["fuse"],
        "flow": [s["flow_algorithm"], s["flow_bound"]],
        "short_side": s["short_side"],
    }


def short_side(params: Params) -> int | None:
    """Median short side of the validation videos: predictions resize inputs to it."""

    sides = []
    for record in load_split(params.dataset, "val").records[:50]:
        try:
            info = probe(record.path)
        except VideoDecodeError:
            continue
        sides.append(min(info.height, info.width))
    return int(sorted(sides)[len(sides) // 2]) if sides else None


# ---- registration ----------------------------------------------------------------------------
def _register(
    client, params: Params, settings: dict, d: Decision, run_id: str
) -> tuple[str, dict[str, float]]:
    """Package, time, log and register one candidate; returns the new version and its timing."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="mml-package-") as tmp:
        package = Path(tmp) / "package"
        members = [
            (ref, artifacts.checkpoint_path(params.paths.checkpoints, ref)) for ref in d.members
        ]
        write_package(package, members, kind=d.kind, **settings)
        timing = time_predictions(VideoPredictor(package), _timing_videos(params))
        with (
            tracking.fluent_store(client),
            mlflow.start_run(run_id=run_id),
            warnings.catch_warnings(),
        ):
            # an input example would be a video file; the signature describes the input
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            info = mlflow.pyfunc.log_model(
                name=d.kind,
                python_model=str(SERVING_CODE),
                artifacts={"package": str(package)},
                code_paths=[str(Path(__file__).parent)],
                signature=_signature(),
                pip_requirements=_requirements(),
            )
    tags = _version_tags(client, params, d, timing)
    with tracking.fluent_store(client):
        version = mlflow.register_model(info.model_uri, d.name, tags=tags)
    client.update_model_version(d.name, version.version, description=_description(d, timing))
    log.info("%s: registered version %s (%s)", d.name, version.version, d.members)
    return str(version.version), timing


def _timing_videos(params: Params) -> list[Path]:

    records = load_split(params.dataset, "val").records
    return [r.path for r in records[: params.promote.timing_videos]]


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        # each row gives one of the two: a path on the server, or the file's bytes in base64
        inputs=Schema(
            [
                ColSpec("string", "video", required=False),
                ColSpec("string", "video_b64", required=False),
            ]
        ),
        params=ParamSchema([ParamSpec("top_k", "long", 5)]),
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = [
        "torch",
        "torchvision",
        "numpy",
        "pandas",
        "decord",
        "av",
        "pydantic",
        "pyyaml",
        "opencv-contrib-python-headless",
        "mlflow",
    ]
    found = []
    for name in names:
        try:
            found.append(f"{name}=={version(name)}")
        except Exception:  # not installed under that name: leave it to the serving env
            continue
    return found


def _version_tags(client, params: Params, d: Decision, timing: dict) -> dict[str, str]:

    runs, hashes, stages = [], [], []
    for ref in d.members:
        meta = checkpoint.load(artifacts.checkpoint_path(params.paths.checkpoints, ref))["meta"]
        runs.append(meta.get("run_id", ""))
        stages.append(artifacts.split_ref(ref)[0])
        try:
            run = client.get_run(meta["run_id"])
            hashes.append(run.data.tags.get(tracking.Tag.PARAMS_HASH, ""))
        except Exception:  # the run lives in another store
            hashes.append("")
    tags = {VersionTag.val(k): f"{v:.4f}" for k, v in d.metrics.items()}
    tags |= {
        VersionTag.METRIC: d.metric,
        VersionTag.CPU_MS_PER_VIDEO: f"{timing.get('ms_per_video', float('nan')):.1f}",
        VersionTag.GIT_COMMIT: tracking.git_commit(),
        VersionTag.DATA_HASH: data_hash(params),
        VersionTag.PARAMS_HASH: ",".join(hashes),
        VersionTag.SOURCE_STAGE: ",".join(dict.fromkeys(stages)),
        VersionTag.SOURCE_MODELS: ",".join(d.members),
        VersionTag.SOURCE_RUN: ",".join(runs),
        VersionTag.FINGERPRINT: d.fingerprint,
    }
    return tags


def data_hash(params: Params) -> str:
    """Hash of the annotation files (labels, train and val splits) of the dataset."""
    cfg = params.dataset
    digest = hashlib.sha256()
    for name in (cfg.labels, cfg.train, cfg.val):
        path = Path(cfg.root) / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:16]


def _description(d: Decision, timing: dict) -> str:
    ms = timing.get("ms_per_video", float("nan"))
    return (
        f"{' + '.join(d.members)}: val {d.metric} {d.value:.2f}, {ms:.0f} ms/video on CPU "
        "(decode, flow/diff, all views)"
    )


def _summary(d: Decision) -> dict:
    data = asdict(d)
    data["champion_after"] = d.version if d.move_alias else d.champion
    return data


def load_for_predict(uri: str, store: str):
    """The pyfunc at `uri` from the MLflow store `store` (its tracking and registry URI).

    Every inference setting comes from the model package (mml.predictor.VideoPredictor).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    try:
        with tracking.fluent_store(client):
            return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"cannot load model {uri}: {first}. Run `mml promote` first, or pass "
            "--model with a models:/ or runs:/ URI."
        ) from None
