"""Faults: `kill -9` during training, cache building and promotion, then the same command
again; corrupt checkpoints; a full disk while writing a checkpoint."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from test_pipeline import mml, runner

from mml import checkpoint
from mml.cli import app
from mml.config import load_params
from mml.data.cache import build_cache
from mml.data.dataset import load_split


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mml", *args, "--quiet"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL `process` as soon as `ready()` holds; False if it ended first."""
    deadline = time.time() + timeout
    while process.poll() is None:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        assert time.time() < deadline, "timed out waiting to kill"
        time.sleep(0.02)
    return False


def set_params(project: Path, **sections) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_kill_9_during_training_then_the_same_command_finishes_the_same_run(project):
    set_params(project, train={"epochs": 8})
    mml("train", "rgb_ce")
    out = project / "checkpoints/rgb_ce"
    reference = torch.load(out / "0.pt", weights_only=True)["state_dict"]
    history = torch.load(out / "last.pt", weights_only=True)["members"][0]["history"]

    def after_first_epoch() -> bool:
        try:
            return checkpoint.load(out / "last.pt")["epoch"] >= 1
        except checkpoint.CheckpointError:  # the first atomic write has not landed yet
            return False

    for stale in out.glob("*.pt"):
        stale.unlink()
    process = start("train", "rgb_ce", cwd=project)
    assert kill_when(process, after_first_epoch), "training ended before it could be killed"
    killed_at = checkpoint.load(out / "last.pt")["epoch"]
    assert 1 <= killed_at < 8
    mml("train", "rgb_ce")  # the same command: resumes from the last complete epoch
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["epoch"] == 8 and resumed["members"][0]["history"] == history
    weights = torch.load(out / "0.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(value, weights[key]) for key, value in reference.items())
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_9_during_cache_building_then_the_same_command_completes_it(project, tmp_path):
    params = load_params(project / "params.yaml")
    records = [r for s in ("train", "val") for r in load_split(params.dataset, s).records]
    reference = tmp_path / "reference"
    build_cache(
        records,
        reference,
        "flow",
        algorithm=params.cache.flow_algorithm,
        bound=params.cache.flow_bound,
        workers=1,
        show_progress=False,
    )
    cache = project / "data/cache/tiny/flow"
    process = start("data", "flow", "--workers", "2", cwd=project)
    helpers: list[psutil.Process] = []

    def three_built() -> bool:
        try:
            helpers[:] = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # it ended just now; kill_when reports that
            return False
        return len(list(cache.glob("*.npy"))) >= 3

    kill_when(process, three_built)
    assert len(list(cache.glob("*.npy"))) < len(records)
    assert helpers  # the pool's processes: they end by themselves, none is left behind
    _, alive = psutil.wait_procs(helpers, timeout=20)
    assert not alive, f"left running after kill -9: {[p.cmdline()[:3] for p in alive]}"
    out = mml("data", "flow")
    assert "0 broken" in out
    for record in records:
        name = f"{record.id}.npy"
        assert np.array_equal(np.load(cache / name), np.load(reference / name)), name
    assert not list(cache.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_9_during_promote_then_the_same_command_registers_once(project):
    set_params(project, train={"epochs": 1})
    mml("train", "rgb_ce")
    mml("evaluate", "rgb_ce")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("mml-tiny")

    def promoting() -> bool:  # the promote run exists: packaging, timing or logging the model
        return bool(client.search_runs([exp.experiment_id], "tags.`mml.role` = 'promote'"))

    process = start("promote", cwd=project)
    assert kill_when(process, promoting), "promote ended before it could be killed"
    out = mml("promote")
    assert "moved champion to version" in out
    (version,) = client.search_model_versions("name = 'mml-tiny-rgb'")
    champion = client.get_model_version_by_alias("mml-tiny-rgb", "champion")
    assert champion.version == version.version
    assert {"mml.fingerprint", "val.top1", "cpu_ms_per_video", "source_run"} <= set(version.tags)
    assert "exists" in mml("promote")  # and nothing more to do
    summary = json.loads((project / "registry/promoted.json").read_text())
    assert summary["rgb"]["champion_after"] == str(version.version)


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_named_in_a_clear_error(project):
    set_params(project, train={"epochs": 1})
    mml("train", "rgb_ce")
    (project / "checkpoints/rgb_ce/0.pt").write_bytes(b"\x00garbage" * 10)
    result = runner.invoke(app, ["evaluate", "rgb_ce", "-q"])
    assert result.exit_code == 2
    assert "checkpoints/rgb_ce/0.pt is corrupt" in result.output
    assert "Traceback" not in result.output
    last = project / "checkpoints/rgb_ce/last.pt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    result = runner.invoke(app, ["train", "rgb_ce", "-q", "-S", "train.epochs=2"])
    assert result.exit_code == 2 and "last.pt is corrupt" in result.output


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"format": 1, "epoch": 1})

    def disk_full(payload, file) -> None:
        Path(file).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left.*intact"):
        checkpoint.save(path, {"format": 1, "epoch": 2})
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
