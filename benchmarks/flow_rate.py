"""TV-L1 (or DIS) flow fields per second per core at a given resolution, and what a dataset's
flow cache then costs in core-hours.

Renders a few textured synthetic videos at each size (mml.data.synth, one object and a
distractor moving over a textured background), decodes them, and times `compute_flow` with one
OpenCV thread in this one process: the rate of one core, as each worker process of
`mml data flow` (or each shard of a cluster build) runs it.

    python benchmarks/flow_rate.py [--sizes 340x256 426x240] [--videos 3] [--frames 45]

Prints a markdown table: fields/s per core at each size, and the core-hours of the flow cache
of Something-Something v2 (220,847 videos, about 45 frames, 240 px high) and Charades (9,848
videos, about 30 s at 24 fps, 480 px high, so the fields are an estimate) at each rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av  # noqa: F401  (before decord: see mml/data/video.py)
import cv2
import numpy as np
import ssv2_like

from mml.data.flow import compute_flow
from mml.data.video import num_frames, read_frames

DATASETS = {  # name: (videos, fields per video)
    "Something-Something v2": (220_847, 44),
    "Charades (24 fps)": (9_848, 30 * 24 - 1),
}


def fields_per_second(size: str, videos: int, frames: int, algorithm: str) -> float:
    width, height = (int(x) for x in size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="mml-flow-rate-") as tmp:
        root = ssv2_like.render(Path(tmp), 2 * videos, width, height, frames)
        paths = sorted(root.glob("videos/*"))[:videos]
        clips = [read_frames(p, np.arange(num_frames(p))) for p in paths]
    compute_flow(clips[0][:3], algorithm)  # warm-up: OpenCV's first call allocates
    fields, start = 0, time.perf_counter()
    for clip in clips:
        compute_flow(clip, algorithm)
        fields += len(clip) - 1
    return fields / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["340x256", "426x240"])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--frames", type=int, default=45)
    parser.add_argument("--algorithm", default="tvl1", choices=["tvl1", "dis"])
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core, as in each worker of a cache build
    names = list(DATASETS)
    print(f"\n{args.algorithm}, {args.videos} videos of {args.frames} frames per size, 1 thread\n")
    print("| size | fields/s per core | " + " | ".join(f"{n}: core-hours" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for size in args.sizes:
        rate = fields_per_second(size, args.videos, args.frames, args.algorithm)
        hours = [videos * fields / rate / 3600 for videos, fields in DATASETS.values()]
        print(f"| {size} | {rate:.1f} | " + " | ".join(f"{h:,.0f}" for h in hours) + " |")


if __name__ == "__main__":
    main()
