"""Seconds per epoch (training, then validation) of whole stages, for thread/worker settings.

Builds each stage's `Trainer` as `mml train` does (real videos and caches, its models and
loader), trains one epoch as a warm-up, then times one more training epoch and one validation.
Checkpoints go to a temporary directory; nothing is logged to MLflow.

    python benchmarks/epoch.py [--stages rgb_ce mml_rfd flow_ce_scratch] \
        [--settings 2x2 1x1] [--params params.yaml] [-S key=value ...]

Each setting runs in a fresh process (a second setting in the same process was measured slower,
whichever it was).

A setting TxW is T torch threads (`compute.threads`) and W loader workers (`loader.workers`).
Needs the pipeline's data, caches and the checkpoints the stages start from (`make run`).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av  # noqa: F401  (before decord: see mml/data/video.py)

from mml.config import load_params
from mml.train import Trainer


def measure(params, stage: str, out: Path) -> tuple[float, float]:
    trainer = Trainer(params, stage, show_progress=False, out_dir=out / stage)
    trainer.train_epoch(0)  # warm-up: first-touch allocations, page cache
    start = time.perf_counter()
    trainer.train_epoch(1)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    trainer.validate()
    return trained, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["rgb_ce", "mml_rfd", "flow_ce_scratch"])
    parser.add_argument("--settings", nargs="+", default=["2x2", "1x1"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    header = [
        "| stage | threads × workers | train s/epoch | validate s | sum |",
        "|---|---|---|---|---|",
    ]
    if len(args.settings) > 1:  # one fresh process per setting: a process that already ran
        rows = []  # another setting is slower for it (measured), whichever comes second
        for setting in args.settings:
            cmd = [sys.executable, __file__, "--settings", setting, "--params", args.params]
            cmd += ["--stages", *args.stages, *(f"-S{o}" for o in args.overrides)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows += [line for line in out.splitlines() if line.startswith("| ") and "×" in line]
            rows = [r for r in rows if not r.startswith("| stage")]
            print("\n".join(rows[-len(args.stages) :]), flush=True)
        print("\n".join(header + rows))
        return
    threads, workers = (int(x) for x in args.settings[0].split("x"))
    extra = [f"compute.threads={threads}", f"loader.workers={workers}"]
    params = load_params(args.params, [*args.overrides, *extra])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            trained, validated = measure(params, stage, Path(tmp))
            rows.append(
                f"| {stage} | {threads} × {workers} | {trained:.2f} | {validated:.2f} | "
                f"{trained + validated:.2f} |"
            )
    print("\n".join(header + rows))


if __name__ == "__main__":
    main()
