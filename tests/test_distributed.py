"""Training in several processes: sharded batches, DDP steps, `mml train --nproc 2` (gloo, CPU).

The stated tolerance: in float64 (`compute.precision`), 2 processes end within 1e-5
(relative) of one process's weights and per-epoch metrics. Measured: 1.4e-7 for the
weights, 2.6e-7 for the metrics after 2 epochs (6 steps); the difference is rounding, which
this tiny net amplifies about 20x per step. In float32 a DDP run differs from one process as
much as one process with 1 thread differs from one with 2 threads (summation order: about
2 % of the weights after 3 steps), so float32 trajectories are not compared.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ddp_step_worker
import numpy as np
import psutil
import pytest
import torch
import yaml
from conftest import tiny_params
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

from mml import checkpoint, distributed
from mml.artifacts import read_stage_metrics
from mml.config import ComputeConfig
from mml.data.sharding import ShardedBatches, shard_indices
from mml.seeds import epoch_order

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.mark.parametrize(("n", "batch_size"), [(12, 4), (13, 4), (7, 3), (5, 8)])
def test_sharded_batches_are_slices_of_the_single_process_batches(n, batch_size):
    for epoch in range(3):
        single = [
            b.tolist()
            for b in DataLoader(
                range(n), batch_size=batch_size, shuffle=True, generator=epoch_order(7, epoch)
            )
        ]
        one = ShardedBatches(n, batch_size, seed=7, epoch=epoch, rank=0, size=1)
        assert list(one) == single and len(one) == len(single)
        for size in (2, 3):
            ranks = [
                list(ShardedBatches(n, batch_size, seed=7, epoch=epoch, rank=r, size=size))
                for r in range(size)
            ]
            kept = [b for b in single if len(b) >= size]  # every process must step
            assert [sum(parts, []) for parts in zip(*ranks, strict=True)] == kept
            assert all(len(r) == len(kept) for r in ranks)
            assert len(
                ShardedBatches(n, batch_size, seed=7, epoch=epoch, rank=0, size=size)
            ) == len(kept)


def test_shard_indices_cover_the_dataset_in_order():
    for n, size in [(8, 2), (9, 2), (2, 3), (10, 4)]:
        parts = [shard_indices(n, r, size) for r in range(size)]
        assert sum(parts, []) == list(range(n))


@pytest.mark.slow
def test_ddp_steps_with_synced_batchnorm_equal_one_process(tmp_path):
    """3 ML steps (KL on each shard, uneven shards 3 + 2, BatchNorm in training mode)."""
    out = tmp_path / "ddp.pt"
    cmd = [*TORCHRUN, "--nproc-per-node=2", ddp_step_worker.__file__, str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ddp = torch.load(out, weights_only=True)
    start = [m.model.state_dict() for m in ddp_step_worker.members()]
    single = ddp_step_worker.single_process_steps()
    for one, two, init in zip(single, ddp, start, strict=True):
        moved = max((one[k] - init[k]).abs().max().item() for k in one if "running" not in k)
        assert moved > 1e-2  # the steps changed the weights
        for key, value in one.items():
            torch.testing.assert_close(two[key], value, rtol=1e-9, atol=1e-9, msg=key)


def _project(root: Path, dataset: Path) -> Path:
    root.mkdir()
    params = tiny_params(
        dataset,
        model={"dropout": 0.0},  # dropout masks are drawn per process
        train={"epochs": 2, "optimizer": "sgd", "lr": 0.01},
        compute={"precision": "float64"},
    )
    params["stages"]["ml"] = {"method": "ml", "models": [{"modality": "rgb"}, {"modality": "rgb"}]}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "mlruns").mkdir()
    return root


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}


def _mml(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mml", *args, "--quiet"],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _last(root: Path) -> dict:
    return torch.load(root / "checkpoints/ml/last.pt", weights_only=True)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_dataset) -> Path:
    root = _project(tmp_path_factory.mktemp("single") / "p", tiny_dataset)
    _mml(root, "train", "ml")
    return root


def _assert_same_training(single: dict, ddp: dict) -> None:
    for k, (one, two) in enumerate(zip(single["members"], ddp["members"], strict=True)):
        diff = sum(
            ((one["model"][n] - two["model"][n]) ** 2).sum()
            for n in one["model"]
            if one["model"][n].is_floating_point()
        )
        scale = sum(
            (one["model"][n] ** 2).sum()
            for n in one["model"]
            if one["model"][n].is_floating_point()
        )
        assert (diff / scale).sqrt() < 1e-5, f"model {k}: weights differ"
        assert len(one["history"]) == len(two["history"]) == 2
        for a, b in zip(one["history"], two["history"], strict=True):
            assert a.keys() == b.keys()
            np.testing.assert_allclose(
                [b[m] for m in a], [a[m] for m in a], rtol=1e-5, err_msg=f"model {k}"
            )


@pytest.mark.slow
def test_train_nproc_2_matches_one_process_and_only_rank_0_writes(
    single_run, tmp_path, tiny_dataset
):
    root = _project(tmp_path / "ddp", tiny_dataset)
    out = _mml(root, "train", "ml", "--nproc", "2", "--evaluate")
    assert out.count("ml.0:") == 1 and out.count("ml.1:") == 1, out  # rank 0 reports
    # --evaluate: the launching process tests the models once, after the workers are done
    assert out.count("ml (Dense 1 + Uniform 2):") == 1, out
    assert len(read_stage_metrics(root / "metrics/ml.json").models) == 2
    _assert_same_training(_last(single_run), _last(root))
    assert {p.name for p in (root / "checkpoints/ml").iterdir()} == {"0.pt", "1.pt", "last.pt"}
    client = MlflowClient(_env(root)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("mml-tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3  # one stage run and its two model runs: nothing from rank 1
    stage = [r for r in runs if r.data.tags["mml.role"] == "stage"]
    assert len(stage) == 1 and stage[0].data.tags["mml.processes"] == "2"
    for run in runs:
        if run.data.tags["mml.role"] == "model":
            history = client.get_metric_history(run.info.run_id, "train/loss")
            assert [m.step for m in history] == [0, 1]  # logged once per epoch
            assert run.info.status == "FINISHED"
            assert client.list_artifacts(run.info.run_id, "checkpoint")


@pytest.mark.slow
def test_killed_ddp_training_resumes_under_torchrun(single_run, tmp_path, tiny_dataset):
    """`mml train` with compute.nproc 2, kill -9 of every process after epoch 1; then
    `torchrun -m mml train` finishes it."""
    root = _project(tmp_path / "ddp", tiny_dataset)
    last = root / "checkpoints/ml/last.pt"
    first = [sys.executable, "-m", "mml", "train", "ml", "-S", "compute.nproc=2", "--quiet"]
    process = subprocess.Popen(
        first, cwd=root, env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (last.exists() and _epoch(last) >= 1):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    launcher = psutil.Process(process.pid)
    tree = [launcher, *launcher.children(recursive=True)]  # mml, torchrun, both workers
    for proc in tree:
        proc.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree, timeout=30)
    assert _epoch(last) == 1
    cmd = [*TORCHRUN, "--nproc-per-node=2", "-m", "mml", "train", "ml", "--quiet"]
    done = subprocess.run(
        cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming after epoch 1" in done.stderr
    _assert_same_training(_last(single_run), _last(root))


def _epoch(path: Path) -> int:
    try:
        return checkpoint.load(path)["epoch"]
    except checkpoint.CheckpointError:  # not yet written
        return 0


def test_torch_threads_leave_the_loader_workers_their_cores(monkeypatch):
    monkeypatch.setattr(distributed, "usable_cpus", lambda: 8)
    before = torch.get_num_threads()
    try:
        assert distributed.set_threads(ComputeConfig(), workers=2) == 6
        assert torch.get_num_threads() == 6
        assert distributed.set_threads(ComputeConfig(nproc=2), workers=2) == 2
        assert distributed.set_threads(ComputeConfig(nproc=4), workers=4) == 1  # at least one
        assert distributed.set_threads(ComputeConfig(threads=3), workers=8) == 3
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_train_nproc_forwards_every_option_it_was_given_to_torchrun(monkeypatch):
    from typer.main import get_command
    from typer.testing import CliRunner

    from mml import cli

    launched = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "launch", lambda n, argv: launched.append((n, argv)) or 0)
    args = ["train", "rgb_ce", "--nproc", "2", "-S", "train.epochs=3", "-S", "seed=2"]
    args += ["--restart-if-changed", "--tuned", "-q", "--params", "other.yaml"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    ((nproc, argv),) = launched
    assert nproc == 2 and argv[:2] == ["train", "rgb_ce"] and "--nproc" not in argv
    assert argv[argv.index("--params") + 1] == "other.yaml"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--set"] == ["train.epochs=3", "seed=2"]
    assert {"--restart-if-changed", "--tuned", "--quiet", "--no-restart"} <= set(argv)
    # every option of the command reaches the workers, whatever options are added later
    # (--evaluate stays with the launching process, which tests once the workers are done)
    for param in get_command(cli.app).commands["train"].params:
        if param.param_type_name == "option" and param.name not in ("nproc", "then_evaluate"):
            assert {*param.opts, *param.secondary_opts} & set(argv), param.name
