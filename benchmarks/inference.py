"""Accuracy vs CPU inference time per video: the paper's point, measured end to end.

For the promoted single RGB model (`models:/mml-<dataset>-rgb@champion`), the CE-RGB baseline
(`--baseline`, default rgb_ce.0, packaged the same way) and the promoted ensemble, predict
every validation video from its file (decode, flow/diff computed on the fly, all test views,
every member) and print top-1 and milliseconds per video.

    python benchmarks/inference.py [--params params.yaml] [--videos N] [--threads 2]

Run it after `make run` (which promotes). Times are wall-clock on this machine's CPU with
`--threads` torch/OpenCV threads; the first video of each model is a warm-up, not timed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def measure(predictor, records) -> tuple[float, float]:
    """(top-1 %, mean ms/video) of `predictor` over `records` (what promotion measures)."""
    from mml.predictor import time_predictions

    probabilities: dict = {}
    timing = time_predictions(predictor, [r.path for r in records], keep=probabilities)
    correct = sum(
        int(np.argmax(probabilities[r.path])) == r.labels[0]
        for r in records
        if r.path in probabilities
    )
    return 100 * correct / len(records), timing["ms_per_video"]


def registered_package(client, uri: str) -> Path:
    """The local package directory of a registered mml model in `client`'s store."""
    import mlflow

    from mml import tracking

    with tracking.fluent_store(client):  # models:/ URIs resolve in the process-wide registry
        return Path(mlflow.artifacts.download_artifacts(uri)) / "artifacts" / "package"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--videos", type=int, default=0, help="val videos (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", default="rgb_ce.0", help="the CE-RGB model '<stage>.<k>'")
    parser.add_argument(
        "--also", action="append", help="more single models, '<stage>.<k>' (default: mml.0)"
    )
    args = parser.parse_args()

    import cv2
    import torch

    from mml import tracking
    from mml.artifacts import checkpoint_path
    from mml.config import load_params
    from mml.data.dataset import load_split
    from mml.predictor import VideoPredictor, write_package
    from mml.registry import package_settings

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    params = load_params(args.params)
    client, _ = tracking.client_and_experiment(params)
    ann = load_split(params.dataset, "val")
    records = ann.records[: args.videos or None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        e = params.evaluate
        settings = {"kind": "rgb", **package_settings(params)}
        singles = {}
        for ref in [args.baseline, *(args.also or ["mml.0"])]:
            package = Path(tmp) / ref
            write_package(
                package, [(ref, checkpoint_path(params.paths.checkpoints, ref))], **settings
            )
            singles[ref] = package
        models = {
            f"CE-RGB baseline ({args.baseline})": singles.pop(args.baseline),
            **{f"single model {ref}": package for ref, package in singles.items()},
            "promoted RGB": registered_package(client, tracking.champion_uri(params, "rgb")),
            "promoted ensemble": registered_package(
                client, tracking.champion_uri(params, "ensemble")
            ),
        }
        for label, package in models.items():
            predictor = VideoPredictor(package)
            members = " + ".join(f"{m.ref} ({m.modality})" for m in predictor.members)
            top1, ms = measure(predictor, records)
            rows.append((label, members, top1, ms))
    base_ms = rows[0][3]
    print(
        f"{len(records)} val videos, {args.threads} threads, views {e.dense_views} dense + "
        f"{e.uniform_views} uniform"
    )
    print("| model | members | val top-1 (%) | CPU ms/video | × baseline time |")
    print("|---|---|---|---|---|")
    for label, members, top1, ms in rows:
        print(f"| {label} | {members} | {top1:.1f} | {ms:.1f} | {ms / base_ms:.1f} |")


if __name__ == "__main__":
    main()
