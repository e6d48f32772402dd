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
import time
from pathlib import Path

import numpy as np


def measure(predictor, records) -> tuple[float, float]:
    """(top-1 %, mean ms/video) of `predictor` over `records`."""
    predictor.predict(records[0].path)  # warm-up
    correct, times = 0, []
    for record in records:
        start = time.perf_counter()
        probabilities = predictor.predict(record.path)
        times.append((time.perf_counter() - start) * 1000)
        correct += int(np.argmax(probabilities)) == record.labels[0]
    return 100 * correct / len(records), float(np.mean(times))


def registered_package(uri: str) -> Path:
    """The local package directory of a registered mml model."""
    import mlflow

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
    from mml.config import load_params
    from mml.data.dataset import load_split
    from mml.data.sampling import ViewPlan
    from mml.models.factory import model_path
    from mml.predictor import VideoPredictor, write_package
    from mml.registry import ALIAS, registered_name, short_side

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    params = load_params(args.params)
    tracking.client_and_experiment(params)
    ann = load_split(params.dataset, "val")
    records = ann.records[: args.videos or None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        e = params.evaluate
        settings = dict(
            kind="rgb", views=ViewPlan(e.dense_views, e.uniform_views), fuse=e.fuse,
            short_side=short_side(params), flow_algorithm=params.cache.flow_algorithm,
            flow_bound=params.cache.flow_bound,
        )  # fmt: skip
        singles = {}
        for ref in [args.baseline, *(args.also or ["mml.0"])]:
            package = Path(tmp) / ref
            write_package(package, [(ref, model_path(params.paths.checkpoints, ref))], **settings)
            singles[ref] = package
        models = {
            f"CE-RGB baseline ({args.baseline})": singles.pop(args.baseline),
            **{f"single model {ref}": package for ref, package in singles.items()},
            "promoted RGB": registered_package(f"models:/{registered_name(params, 'rgb')}@{ALIAS}"),
            "promoted ensemble": registered_package(
                f"models:/{registered_name(params, 'ensemble')}@{ALIAS}"
            ),
        }
        for label, package in models.items():
            predictor = VideoPredictor(package)
            members = " + ".join(f"{m.ref} ({m.modality})" for m in predictor.members)
            top1, ms = measure(predictor, records)
            rows.append((label, members, top1, ms))
    base_ms = rows[0][3]
    print(f"{len(records)} val videos, {args.threads} threads, views {e.dense_views} dense + "
          f"{e.uniform_views} uniform")  # fmt: skip
    print("| model | members | val top-1 (%) | CPU ms/video | × baseline time |")
    print("|---|---|---|---|---|")
    for label, members, top1, ms in rows:
        print(f"| {label} | {members} | {top1:.1f} | {ms:.1f} | {ms / base_ms:.1f} |")


if __name__ == "__main__":
    main()
