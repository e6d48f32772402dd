"""Flow/diff cache build speed (TV-L1 vs DIS, 1 and 2 workers), cache size per video, and the
time to load one training clip of each modality.

Times `mml.data.cache.build_cache` into a temp directory on the first N videos of the train
split, at the videos' own resolution (64x64 for the default synthetic dataset). Clip loading is
`VideoClips.__getitem__` in the main process (decode or cache read, sampling, crop, normalise).

    python benchmarks/flow.py [--params params.yaml] [--videos 20] [-S key=value ...]

Needs the dataset (`mml data synth` for the default). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import av  # noqa: F401  (before decord: see mml/data/video.py)
import cv2
import numpy as np
import torch

from mml.config import load_params
from mml.data.cache import build_cache, cache_path
from mml.data.dataset import VideoClips, load_split
from mml.data.flow import compute_flow
from mml.data.video import num_frames, probe, read_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    params = load_params(args.params, args.overrides)
    try:
        records = load_split(params.dataset, "train").records[: args.videos]
    except (OSError, ValueError) as err:
        sys.exit(f"cannot read the dataset at {params.dataset.root}: {err}\nRun `mml data synth`.")
    if not records:
        sys.exit(f"no train videos under {params.dataset.root}; run `mml data synth` first.")
    fields = sum(num_frames(r.path) - 1 for r in records)
    info = probe(records[0].path)
    print(f"{len(records)} videos, {fields} flow fields, {info.height}x{info.width} px\n")

    print("| algorithm | compute_flow only, 1 thread (fields/s) |\n|---|---|")
    sample = [read_frames(r.path, np.arange(num_frames(r.path))) for r in records[:5]]
    cv2.setNumThreads(1)
    for algorithm in ("tvl1", "dis"):
        start = time.perf_counter()
        count = sum(len(compute_flow(frames, algorithm)) for frames in sample)
        print(f"| {algorithm} | {count / (time.perf_counter() - start):.0f} |")

    print("\n| algorithm | build_cache workers | fields/s (decode+flow+save) | s total |")
    print("|---|---|---|---|")
    for algorithm in ("tvl1", "dis"):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                report = build_cache(
                    records,
                    Path(tmp),
                    "flow",
                    algorithm=algorithm,
                    workers=workers,
                    show_progress=False,
                )
            rate = fields / report.seconds
            print(f"| {algorithm} | {workers} | {rate:.0f} | {report.seconds:.2f} |")

    print("\n| cache | bytes/video (uint8 .npy) | float32 equivalent | ratio |\n|---|---|---|---|")
    for kind, channels in (("flow", 2), ("diff", 3)):
        with tempfile.TemporaryDirectory() as tmp:
            build_cache(records, Path(tmp), kind, algorithm="dis", show_progress=False)
            size = sum(cache_path(Path(tmp), r.id).stat().st_size for r in records) / len(records)
        as_float = fields * info.height * info.width * channels * 4 / len(records)
        print(f"| {kind} | {size:,.0f} | {as_float:,.0f} | {as_float / size:.1f}x |")

    print("\n| modality | ms per training clip (1 process) |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        caches = {kind: Path(tmp) / kind for kind in ("flow", "diff")}
        for kind, path in caches.items():
            build_cache(records, path, kind, algorithm="dis", show_progress=False)
        ann = dataclasses.replace(load_split(params.dataset, "train"), records=tuple(records))
        torch.set_num_threads(1)
        for modality in ("rgb", "flow", "diff"):
            clips = VideoClips(
                ann,
                params.clip,
                train=True,
                seed=params.seed,
                modalities=(modality,),
                caches={m: p for m, p in caches.items() if m == modality},
            )
            clips[0]  # warm-up (imports, first file open)
            start = time.perf_counter()
            for index in range(len(clips)):
                clips[index]
            ms = 1000 * (time.perf_counter() - start) / len(clips)
            print(f"| {modality} | {ms:.1f} |")


if __name__ == "__main__":
    main()
