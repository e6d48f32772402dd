"""One-shot GPU check: the paper's model in each precision, mml's training on the GPU, and DDP
under torchrun with NCCL. No network, no dataset download; a few minutes on one CUDA GPU.

    .venv/bin/python benchmarks/gpu_check.py             # on a CUDA machine
    .venv/bin/python benchmarks/gpu_check.py --allow-cpu # the same checks on the CPU (gloo)

Checks, each a row of the printed table:
1. a TSM-ResNet-50 (T = 8, 224 x 224, random weights and clips) training step in float32, bf16
   and fp16 with channels_last, as `compute.precision` runs it (mml.train.JointStep): clips/s
   and peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS growth);
2. `mml train` of a tiny synthetic dataset (written here, in a temp directory) on the device;
3. the same under `torchrun --nproc-per-node 1 -m mml train` with the NCCL backend (gloo on
   the CPU).

Without CUDA every check is skipped with a message and the exit code is 0, unless
`--allow-cpu`, which runs them on the CPU (smaller: `--arch`, `--size`, `--batch` to taste).
Any failure makes the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import av  # noqa: F401  (before decord: see mml/data/video.py)
import torch
import yaml

BIN = Path(sys.executable).parent
TINY = {
    "seed": 0,
    "dataset": {"name": "gpucheck", "root": "data"},
    "synth": {
        "seed": 0,
        "train_per_class": 4,
        "val_per_class": 2,
        "frames": [12, 16],
        "height": 32,
        "width": 32,
        "num_classes": 4,
    },
    "clip": {"segments": 4, "scale_size": 32, "crop_size": 28},
    "loader": {"batch_size": 4, "workers": 0},
    "model": {"arch": "tsm_mobilenet_v2", "width_mult": 0.35},
    "train": {"epochs": 1},
    "stages": {"rgb_ce": {"method": "ce", "models": [{"modality": "rgb", "init": "scratch"}]}},
}


def step_rate(arch: str, precision: str, size: int, batch: int, steps: int, device: str) -> dict:
    """clips/s and peak memory of a CE training step at `precision` (float32 weights)."""
    from mml.config import ModelConfig, StageConfig
    from mml.data.dataset import Batch
    from mml.models import build_model
    from mml.train import JointStep, Member, for_precision, precision_dtypes

    dev = torch.device(device)
    dtype, autocast = precision_dtypes(precision)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch), 174, "rgb").to(dev, dtype).train()
    model = for_precision(model, arch, autocast)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for group in optimizer.param_groups:
        group["lr_mult"] = 1.0
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    joint = JointStep(
        StageConfig(method="ce", models=[{"modality": "rgb"}]),
        [Member(0, "rgb", model, optimizer)],
        False,
        174,
        device=dev,
        dtype=dtype,
        autocast=autocast,
        scaler=scaler,
    )
    clips = torch.randn(batch, 8, 3, size, size)
    data = Batch(
        {"rgb": clips}, torch.randint(0, 174, (batch,)), [str(i) for i in range(batch)], []
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    joint(data, 0.01)  # warm-up (cuDNN autotuning, allocator)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = joint(data, 0.01)[0]["train/loss"]
    sync()
    seconds = time.perf_counter() - start
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"{precision}: the loss is {loss}")
    return {"clips_s": batch * steps / seconds, "peak_mb": peak}


def run(cmd: list[str], cwd: Path, env: dict) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{tail}")


def tiny_training(device: str, backend: str) -> tuple[str, str]:
    """`mml train` of a tiny dataset on `device`, then under torchrun with `backend`."""
    with tempfile.TemporaryDirectory(prefix="mml-gpu-check-") as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(yaml.safe_dump(TINY))
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
        run([str(BIN / "mml"), "data", "synth", "-q"], root, env)
        on = ["-S", f"compute.device={device}", "-S", f"compute.backend={backend}"]
        start = time.perf_counter()
        run([str(BIN / "mml"), "train", "rgb_ce", "-q", "--restart", *on], root, env)
        alone = f"{time.perf_counter() - start:.1f} s"
        torchrun = [str(BIN / "torchrun"), "--nproc-per-node", "1", "-m", "mml"]
        start = time.perf_counter()
        run([*torchrun, "train", "rgb_ce", "-q", "--restart", *on], root, env)
        return alone, f"{time.perf_counter() - start:.1f} s"


class _Skipped(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run the checks on the CPU")
    parser.add_argument("--arch", default="tsm_resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--only-steps", action="store_true", help="skip checks 2 and 3")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device: every GPU check skipped (--allow-cpu runs them on the CPU)")
        return 0
    device = "cuda" if cuda else "cpu"
    backend = "nccl" if cuda else "gloo"
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(
        f"\n{name}, torch {torch.__version__}, {args.arch} T=8 {args.size}^2 batch {args.batch}\n"
    )
    rows, failed = [], False
    print("| check | result | clips/s | peak MB |\n|---|---|---|---|")
    for precision in ("float32", "bf16", "fp16"):
        label = f"{args.arch} step, {precision}" + (
            ", channels_last" if precision != "float32" else ""
        )
        try:
            r = step_rate(args.arch, precision, args.size, args.batch, args.steps, device)
            row = {"check": label, "result": "ok", **r}
        except Exception:  # report every check, then fail
            traceback.print_exc()
            row, failed = {"check": label, "result": "FAILED"}, True
        rows.append(row)
        cells = [f"{row[k]:.1f}" if k in row else "-" for k in ("clips_s", "peak_mb")]
        print(f"| {label} | {row['result']} | {cells[0]} | {cells[1]} |")
    try:
        if args.only_steps:
            raise _Skipped
        alone, ddp = tiny_training(device, backend)
        results = [
            (f"mml train on {device}", f"ok ({alone})"),
            (f"torchrun --nproc-per-node 1, {backend}", f"ok ({ddp})"),
        ]
    except _Skipped:
        results = [(f"mml train on {device}, then under torchrun", "skipped (--only-steps)")]
    except Exception as err:
        print(err, file=sys.stderr)
        results, failed = [(f"mml train on {device}, then under torchrun", "FAILED")], True
    for check, result in results:
        rows.append({"check": check, "result": result})
        print(f"| {check} | {result} | - | - |")
    if args.json:
        print(json.dumps(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
