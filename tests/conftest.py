"""Shared fixtures: a tiny synthetic dataset (real WebM files) and project directories."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

# DVC (`dvc repro`, `dvc exp run` in the tests' subprocesses) starts an analytics daemon after
# every command, which cannot reach the network here and leaves a file in /tmp each time
os.environ["DVC_NO_ANALYTICS"] = "1"

TINY_SYNTH = dict(
    seed=3,
    train_per_class=3,
    val_per_class=2,
    frames=[10, 14],
    height=32,
    width=32,
    fps=12,
    codec="vp9",
    num_classes=4,
    distractors=1,
    jitter=1.0,
    noise=4.0,
    object_scale=1.0,  # the fixture's look when it was made (mml.config's defaults differed)
    texture=1.0,
    dark_share=0.0,
)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 4-class synthetic SSv2-format dataset, 12 train + 8 val videos of 32x32 px."""
    from mml.config import SynthConfig
    from mml.data.synth import generate

    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate(root, SynthConfig(**TINY_SYNTH))
    return root


def tiny_params(dataset_root: Path, **sections) -> dict:
    """params.yaml content for a tiny, fast run on `dataset_root`."""
    params = {
        "seed": 0,
        "dataset": {"name": "tiny", "root": str(dataset_root)},
        "synth": TINY_SYNTH,
        "clip": {"segments": 4, "scale_size": 32, "crop_size": 28},
        "loader": {"batch_size": 4, "workers": 0},
        "model": {"arch": "tsm_mobilenet_v2", "width_mult": 0.35, "dropout": 0.2},
        "train": {"epochs": 2, "lr": 0.05, "val_every": 1},  # curves of every epoch
        "evaluate": {"batch_size": 4},
        "stages": {"rgb_ce": {"method": "ce", "models": [{"modality": "rgb", "init": "scratch"}]}},
    }
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values} if isinstance(values, dict) else values
    return params


@pytest.fixture
def project(tmp_path, tiny_dataset, monkeypatch) -> Path:
    """A working directory with params.yaml and its own MLflow sqlite store."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_dataset)))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "mlruns").mkdir()
    return tmp_path


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    """Poll `url` until it answers; fail with the server's output if it exits first."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert server.poll() is None, server.stdout.read()
            assert time.time() < deadline, f"{url} did not answer within {timeout} s"
            time.sleep(1)
