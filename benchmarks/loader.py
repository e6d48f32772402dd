"""Training-loader throughput: mml's loader (decord, sampled frames only) vs a naive baseline.

The baseline decodes the whole video with PyAV and then indexes the sampled frames, as many
simple loaders do. Both go through the same DataLoader (workers, batch size) and transforms.

    python benchmarks/loader.py [--params params.yaml] [--batches 30] [-S key=value ...]

Needs the dataset (`mml data synth` for the default). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import av  # noqa: F401  (before decord: see mml/data/video.py)
import numpy as np

from mml.config import load_params
from mml.data import dataset as dataset_module
from mml.data.dataset import VideoClips, load_split, make_loader


def naive_read_frames(path, indices) -> np.ndarray:
    """Decode every frame with PyAV, then index."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)[np.asarray(indices)]


def naive_num_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def measure(params, batches: int) -> float:
    ann = load_split(params.dataset, "train")
    clips = VideoClips(ann, params.clip, train=True, seed=params.seed)
    loader = make_loader(clips, params.loader, shuffle=True, seed=params.seed)
    iterator = iter(loader)
    next(iterator)  # start-up (worker fork) is not throughput
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(make_loader(clips, params.loader, shuffle=True, seed=1))
            batch = next(iterator)
        count += len(batch.ids)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    params = load_params(args.params, args.overrides)
    rows = [("mml (decord, sampled frames)", measure(params, args.batches))]
    dataset_module.read_frames, dataset_module.num_frames = naive_read_frames, naive_num_frames
    rows.append(("naive (PyAV, decode all, index)", measure(params, args.batches)))
    c, lo = params.clip, params.loader
    print(
        f"\nT={c.segments}, crop {c.crop_size}, batch {lo.batch_size}, workers {lo.workers}, "
        f"{args.batches} batches, dataset {params.dataset.root}\n"
    )
    print("| loader | clips/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")


if __name__ == "__main__":
    main()
