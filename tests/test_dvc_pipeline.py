"""The real `dvc repro` of the repository's dvc.yaml, on a tiny config, in a temp git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from videos import synth_config

from mml import checkpoint
from mml.artifacts import checkpoint_path, read_stage_metrics
from mml.data.synth import generate
from mml.fsio import file_hash

pytestmark = pytest.mark.slow  # git, `dvc repro` and `dvc exp run` in subprocesses

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "synth": {
        "num_classes": 3,
        "train_per_class": 3,
        "val_per_class": 2,
        "frames": [8, 10],
        "height": 32,
        "width": 32,
    },
    "clip": {"segments": 2, "scale_size": 32, "crop_size": 28},
    "loader": {"batch_size": 4, "workers": 0},
    "cache": {"flow_algorithm": "dis"},
    "train": {"epochs": 1},
    "evaluate": {"batch_size": 4},
    "pretrain": {"images": 200, "epochs": 1, "batch_size": 8},
}


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store: sqlite:///mlruns/mlflow.db
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def tiny_params(path: Path, **sections) -> None:
    """Shrink a params file: tiny sizes, 1 epoch everywhere, no ImageNet weights (offline)."""
    params = yaml.safe_load(path.read_text())
    for section, values in {**TINY, **sections}.items():
        params.setdefault(section, {}).update(values)
    for stage in params["stages"].values():
        if "train.epochs" in stage.get("overrides", {}):  # fine-tuning stages' own epochs
            stage["overrides"]["train.epochs"] = 1
        for model in stage["models"]:
            if model.get("init") == "imagenet":
                model["init"] = "scratch"
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo: Path, message: str) -> None:
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=repo)
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, cwd=repo)


def clone(root: Path) -> Path:
    """The repository's files (tracked ones plus the working copies of the pipeline files)."""
    tracked = run("git", "ls-files", cwd=REPO).stdout.split()
    extra = [
        "dvc.yaml",
        "params.yaml",
        *(str(p.relative_to(REPO)) for p in (REPO / "pipelines").rglob("*.yaml")),
    ]
    for name in tracked + extra:
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    run("git", "init", "-q", cwd=root)
    return root


def stand_in(root: Path, dataset: str) -> Path:
    """A clone with pipelines/<dataset>: data placed and `dvc add`ed as its README says."""
    repo = clone(root)
    here = repo / "pipelines" / dataset
    # small models of the pipeline's family: checkpoint I/O of R50s dominated this test
    small = {"ssv2": "tsm_mobilenet_v2", "charades": "i3d_resnet18"}[dataset]
    tiny_params(
        here / "params.yaml",
        loader={"batch_size": 4, "workers": 0},
        model={"arch": small, "width_mult": 0.35},
    )
    raw = here / "data" / "raw" / dataset
    if dataset == "ssv2":  # labels.json, train.json, validation.json, videos/<id>.webm
        generate(raw, TINY_SPEC)
    else:  # Charades CSVs, Charades_v1_480/<id>.mp4
        generate(raw, TINY_SPEC.model_copy(update=CHARADES_STAND_IN))
        (raw / "videos").rename(raw / "Charades_v1_480")
    run("dvc", "add", f"data/raw/{dataset}", cwd=here)
    commit(repo, f"{dataset} stand-in")
    return repo


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    """Fresh clones after `dvc repro`: the default pipeline (tiny params) and both real-dataset
    pipelines on stand-ins. The three run side by side: most of their time is Python start-up
    of ~100 stages, which two cores halve."""
    default = clone(tmp_path_factory.mktemp("clone"))
    tiny_params(default / "params.yaml")
    commit(default, "tiny")
    clones = {"default": default}
    jobs = {"default": (default, ["mml", "repro", "--jobs", "2"])}  # as `make run`
    for dataset in ("ssv2", "charades"):
        clones[dataset] = stand_in(tmp_path_factory.mktemp(dataset), dataset)
        # each is a DVC sub-repository (pipelines/README.md): its commands run inside it
        jobs[dataset] = (clones[dataset] / "pipelines" / dataset, ["dvc", "repro"])
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # each project's own store: sqlite:///mlruns/mlflow.db
    started = {
        name: subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name, (cwd, args) in jobs.items()
    }
    outputs = {name: process.communicate()[0] for name, process in started.items()}
    for name, process in started.items():
        assert process.returncode == 0, f"dvc repro of {name} failed:\n{outputs[name]}"
    return clones


@pytest.fixture(scope="module")
def pipeline(repos) -> Path:
    """The default pipeline's clone after `dvc repro`."""
    return repos["default"]


def test_repro_runs_every_stage_and_tracks_them(pipeline, tmp_path):
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    for stage, cfg in params["stages"].items():
        assert len(list((pipeline / "checkpoints" / stage).glob("[0-9].pt"))) == len(cfg["models"])
        metrics = read_stage_metrics(pipeline / "metrics" / f"{stage}.json")
        assert 0 <= metrics.models[0].scores["top1"] <= 100
        assert (pipeline / "plots" / stage / "curves" / "0.csv").exists()
    ensembles = json.loads((pipeline / "metrics/ensembles.json").read_text())
    assert {len(e["members"]) for e in ensembles["ensembles"]} == {2, 3}
    summary = (pipeline / "reports/summary.md").read_text()
    for title in (
        "Tab. 1",
        "MARS and D3D",
        "Mutual Learning",
        "Mutual Modality Learning",
        "Ensembles",
    ):
        assert title in summary
    client = MlflowClient(f"sqlite:///{pipeline / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mml-synthetic")
    parents = client.search_runs([exp.experiment_id], "tags.`mml.role` = 'stage'")
    assert {r.data.tags["stage"] for r in parents} == set(params["stages"])
    head = run("git", "rev-parse", "HEAD", cwd=pipeline).stdout.strip()
    assert all(r.data.tags["git_commit"].startswith(head) for r in parents)
    assert all(len(r.data.tags["params_hash"]) == 16 for r in parents)
    roles = client.search_runs([exp.experiment_id], "tags.`mml.role` = 'report'")
    assert len(roles) == 1
    # the report run's figures: curves of the runs that trained the workspace's checkpoints
    got = client.download_artifacts(roles[0].info.run_id, "figures", str(tmp_path))
    shown = json.loads((Path(got) / "curves.json").read_text())
    assert set(shown["init"]) == {
        "flow_ce_rgb.0",
        "flow_ce_scratch.0",
        "diff_ce_rgb.0",
        "diff_ce_scratch.0",
    }
    assert set(shown["methods"]) == {
        "mml_rfd.0",
        "mml_rf.0",
        "rgb_ml.0",
        "rgb_ce_re.0",
        "mars.0",
        "d3d.0",
    }
    for ref, curve in {**shown["init"], **shown["methods"]}.items():
        saved = checkpoint.load(checkpoint_path(pipeline / "checkpoints", ref))
        assert curve["run_id"] == saved["meta"]["run_id"]
        history = sorted(
            client.get_metric_history(curve["run_id"], "val/top1"), key=lambda m: m.step
        )
        assert curve["points"] == [[m.step + 1, m.value] for m in history]
    assert {p.name for p in Path(got).glob("*.png")} == {"init.png", "methods.png", "ensembles.png"}
    promoted = json.loads((pipeline / "registry/promoted.json").read_text())
    assert set(promoted) == {"rgb", "ensemble"}
    for kind, decision in promoted.items():
        version = client.get_model_version_by_alias(f"mml-synthetic-{kind}", "champion")
        assert version.tags["source_models"] == ",".join(decision["members"])
    assert yaml.safe_load((pipeline / "tuned/mml.yaml").read_text())["values"] == {}  # tuning off


def clean(result: subprocess.CompletedProcess) -> str:
    """The output of a DVC command that must print no error or warning."""
    said = result.stdout + result.stderr
    for word in ("ERROR", "WARNING", "failed"):
        assert word not in said, f"{' '.join(result.args)}:\n{said}"
    return result.stdout


def test_second_repro_does_nothing_and_the_readmes_dvc_commands_are_clean(pipeline):
    # pipelines/ssv2 and pipelines/charades were never run here; as sub-repositories they stay
    # out of the root's commands (before: "DVC failed to load some plots ... 'workspace'")
    again = run("dvc", "repro", cwd=pipeline)
    assert "didn't change" in again.stdout and "Running stage" not in again.stdout
    shown = clean(run("dvc", "metrics", "show", cwd=pipeline))
    assert "metrics/rgb_ce.json" in shown and "metrics/ensembles.json" in shown
    assert "pipelines/" not in shown
    assert "up to date" in clean(run("dvc", "status", cwd=pipeline))
    clean(run("dvc", "plots", "show", "-o", "rendered", cwd=pipeline))
    html = (pipeline / "rendered" / "index.html").read_text()
    assert "plots/mml/curves/0.csv" in html and "confusion_0.png" in html
    assert "pipelines/" not in html


def test_a_stage_param_change_reruns_only_that_stage_and_its_dependents(pipeline):
    params_file = pipeline / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["stages"]["d3d"]["distill_weight"] = 0.5
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=pipeline).stdout)
    assert set(status) == {"train@d3d", "report"}
    run("dvc", "repro", cwd=pipeline)
    assert json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=pipeline).stdout) == {}


def test_an_evaluate_change_retests_a_stage_without_retraining_it(pipeline):
    # `mml train --evaluate`: the stage re-runs, its last.pt (persist) still matches, so only
    # the multi-view test runs again; the curves DVC removed before the run are written back
    params_file = pipeline / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    stage = "rgb_ce_re"
    saved = sorted((pipeline / "checkpoints" / stage).glob("*.pt"))
    before = {p.name: file_hash(p) for p in saved}
    assert read_stage_metrics(pipeline / "metrics" / f"{stage}.json").views == "Dense 1 + Uniform 2"
    params["stages"][stage].setdefault("overrides", {})["evaluate.uniform_views"] = 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=pipeline).stdout)
    assert set(status) == {f"train@{stage}", "report"}  # report: `stages` is its param
    result = run("dvc", "repro", cwd=pipeline)
    assert f"{stage}.0 epoch" not in result.stdout + result.stderr  # nothing trained
    assert {p.name: file_hash(p) for p in saved} == before
    assert read_stage_metrics(pipeline / "metrics" / f"{stage}.json").views == "Dense 1 + Uniform 1"
    assert (pipeline / "plots" / stage / "curves" / "0.csv").exists()
    assert sorted((pipeline / "predictions" / stage).glob("*.npz"))
    assert json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=pipeline).stdout) == {}


def test_dvc_exp_run_sets_a_stage_param(pipeline):
    result = run("dvc", "exp", "run", "-S", "stages.mml.kl_weight=0.5", cwd=pipeline)
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if "Running stage" in line}
    assert {"train@mml", "ensemble", "report"} <= ran
    assert "train@rgb_ce" not in ran and "train@rgb_ml" not in ran
    shown = run("dvc", "exp", "show", "--json", cwd=pipeline).stdout
    assert "0.5" in shown


CHARADES_STAND_IN = {"codec": "h264", "multilabel": True, "actions": (1, 2)}
TINY_SPEC = synth_config(
    seed=4, train_per_class=2, val_per_class=1, frames=(8, 10), height=32, width=32, num_classes=3
)


@pytest.mark.parametrize("dataset", ["ssv2", "charades"])
def test_real_dataset_pipeline_on_a_stand_in_in_its_format(repos, dataset):
    """pipelines/<dataset> after `dvc repro` on its stand-in (see `stand_in`, `repos`).

    Every stage ran: caches, trainings (SSv2: the 16 of the default pipeline; Charades: Tab. 6),
    evaluations, ensembles, promotion and the report.
    """
    repo = repos[dataset]
    here = repo / "pipelines" / dataset
    params = yaml.safe_load((here / "params.yaml").read_text())
    key = "mAP" if dataset == "charades" else "top1"
    for stage in params["stages"]:
        metrics = read_stage_metrics(here / "metrics" / f"{stage}.json")
        assert 0 <= metrics.models[0].scores[key] <= 100
    client = MlflowClient(f"sqlite:///{here / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"mml-{dataset}")
    parents = client.search_runs([exp.experiment_id], "tags.`mml.role` = 'stage'")
    assert {r.data.tags["stage"] for r in parents} == set(params["stages"])
    assert "| model |" in (here / "reports/summary.md").read_text()
    assert json.loads((here / "metrics/ensembles.json").read_text())["ensembles"]
    promoted = json.loads((here / "registry/promoted.json").read_text())
    champion = client.get_model_version_by_alias(f"mml-{dataset}-rgb", "champion")
    assert champion.tags["source_models"] == ",".join(promoted["rgb"]["members"])
    if dataset == "ssv2":  # cache.diff_from_video: the diff stages read the videos
        diff_cache = here / params["cache"]["root"] / params["dataset"]["name"] / "diff"
        assert [p.name for p in diff_cache.iterdir()] == ["settings.json"]
    assert "didn't change" in run("dvc", "repro", cwd=here).stdout
    assert (here / "dvc.lock").exists() and not (repo / "dvc.lock").exists()
    # the lock names the code it depends on as dvc.yaml does, relative: a clone elsewhere matches
    assert "../../mml/train.py" in (here / "dvc.lock").read_text()
