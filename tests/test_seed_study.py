"""benchmarks/seed_study.py end to end: real DVC queue, real experiments, `mml report --exp`.

The pipeline is a one-stage stand-in (predictions that depend on the seed) in a scratch git +
DVC repository, so that the queue -> experiments -> report path runs in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path

import pytest
import yaml
from test_dvc_pipeline import REPO, commit, run

pytestmark = pytest.mark.slow  # git, DVC and `dvc exp run` in subprocesses

FAKE_EVALUATE = """
import numpy as np, yaml
from pathlib import Path

seed = yaml.safe_load(open("params.yaml"))["seed"]
assert seed != 3, "seed 3 fails on purpose"
targets = np.arange(60) % 6
for stage, right in (("flow_ce_rgb", 40 + 3 * seed), ("flow_ce_scratch", 20)):
    scores = np.full((60, 6), 0.02)
    hit = np.arange(60) < right
    scores[np.arange(60), np.where(hit, targets, (targets + 1) % 6)] = 0.9
    path = Path("predictions") / stage / "0.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=scores, targets=targets, ids=np.array([f"v{i}" for i in range(60)]),
             classes=np.array([f"c{i}" for i in range(6)]), modality=np.array("flow"))
"""

EVALUATE = {
    "cmd": "python fake_evaluate.py",
    "params": ["seed"],
    "deps": ["fake_evaluate.py"],
    "outs": ["predictions"],
}


@pytest.fixture
def scratch(tmp_path) -> Path:
    repo = tmp_path / "study"
    repo.mkdir()
    stages = {
        s: {"method": "ce", "models": [{"modality": "flow"}]}
        for s in ("flow_ce_rgb", "flow_ce_scratch")
    }
    params = {"seed": 0, "dataset": {"name": "tiny"}, "stages": stages}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": EVALUATE}}))
    (repo / "fake_evaluate.py").write_text(FAKE_EVALUATE)
    (repo / ".gitignore").write_text("/mlruns/\n/reports/\n")
    run("git", "init", "-q", cwd=repo)
    for key, value in (("user.email", "t@t"), ("user.name", "t")):  # experiments commit too
        run("git", "config", key, value, cwd=repo)
    run("dvc", "init", "-q", cwd=repo)
    commit(repo, "stand-in pipeline")
    return repo


def test_seed_study_queues_runs_and_reports_over_the_seeds(scratch):
    script = str(REPO / "benchmarks" / "seed_study.py")
    result = run(
        sys.executable, script, "--seeds", "1", "2", "3", "--poll", "1", cwd=scratch, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr  # seed 3 failed
    assert "seed-3 failed" in result.stderr and "seed 3 fails on purpose" in result.stderr
    assert "report: reports/summary.md (2 of 3 seeds)" in result.stdout
    data = json.loads((scratch / "reports/summary.json").read_text())
    # the workspace never ran the pipeline: only the experiments, each with its own seed
    assert data["runs"] == [{"name": "seed-1", "seed": 1}, {"name": "seed-2", "seed": 2}]
    (row,) = [c for c in data["comparisons"] if c["a"] == "flow_ce_rgb.0"]
    # each experiment read at its own revision: RGB-init wins by 23 and 26 of 60 videos
    assert row["runs"] == ["seed-1", "seed-2"] and row["diff"] == round(24.5 / 60 * 100, 2)
    assert row["verdict"] == "holds"
    # the same experiments through --all-exps (finished ones only)
    shown = run("mml", "report", "-q", "--all-exps", "--out", "again", cwd=scratch).stdout
    assert "2 runs" in shown
    again = json.loads((scratch / "again/summary.json").read_text())
    assert sorted(r["name"] for r in again["runs"]) == ["seed-1", "seed-2"]


def load_study():
    spec = importlib.util.spec_from_file_location("seed_study", REPO / "benchmarks/seed_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_an_experiment_that_is_neither_queued_nor_done_is_not_waited_for(scratch, monkeypatch):
    """A task removed from the queue (`dvc queue remove`) must not make the study wait forever."""
    study = load_study()
    monkeypatch.chdir(scratch)
    run("dvc", "exp", "run", "--queue", "-S", "seed=5", "--name", "seed-5", cwd=scratch)
    assert study.states(["seed-5", "seed-6"]) == {"seed-5": "Queued", "seed-6": "Missing"}
    run("dvc", "queue", "remove", "--queued", cwd=scratch)
    assert study.states(["seed-5"]) == {"seed-5": "Missing"}
    assert study.wait(["seed-5"], poll=0.1) == {"seed-5": "Missing"}


def test_a_queue_whose_worker_died_is_started_again(scratch, monkeypatch):
    """Experiments left queued with no worker alive (its worker died) are run, not waited on."""
    study = load_study()
    monkeypatch.chdir(scratch)
    run("dvc", "exp", "run", "--queue", "-S", "seed=5", "--name", "seed-5", cwd=scratch)
    # the queue was never started: no worker, as after a worker that died with seed-5 queued
    assert study.queue_status(["seed-5"]) == ({"seed-5": "Queued"}, 0)
    final = {}
    waiting = threading.Thread(
        target=lambda: final.update(study.wait(["seed-5"], poll=0.5, grace=0)), daemon=True
    )
    waiting.start()
    waiting.join(300)
    assert final == {"seed-5": "Success"}
    assert study.restart_dead_queue(["seed-5"], jobs=1) is False  # nothing waits any more
