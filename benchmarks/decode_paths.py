"""What a read costs by decord's random access and by one PyAV decode from frame 0: the
measurement behind `mml.data.video.FRAME_MS`, `DECORD_EXTRA_MS` and `decord_worth`.

    python benchmarks/decode_paths.py [--videos 6] [--repeats 3]

Renders textured synthetic videos (VP9, a key frame every 16 frames) at the default's size
(32 x 32, 48 frames) and at Something-Something v2's (426 x 240, 45 frames) into a temp
directory, and reads one frame k of each, for every k, both ways (interleaved, median of
`--repeats`). Fits, in ms:
- PyAV from frame 0:  a + b * (k + 1)              (open, then decode k + 1 frames)
- decord:             c + d * (k - key(k) + 1)     (open, seek to the key frame before k)
and prints the frames seeking must skip before decord is the faster, (c - a) / b, next to
what `mml.data.video.decord_worth` (a line through two such fits) says for that size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ssv2_like

from mml.data import video


def timed(read, *args) -> float:
    start = time.perf_counter()
    read(*args)
    return (time.perf_counter() - start) * 1e3


def measure(paths: list[Path], repeats: int) -> np.ndarray:
    """Rows: frames decoded from 0, frames decoded after the seek, ms PyAV, ms decord; a
    column per read."""
    rows = []
    for path in paths:
        info = video.probe(path)
        for k in range(info.num_frames):
            wanted = np.array([k])
            key = max(f for f in info.keyframes if f <= k)
            seq, dec = [], []
            for _ in range(repeats):
                seq.append(timed(video._decode_sequentially, path, wanted))
                dec.append(timed(video._read_with_decord, path, wanted, info.num_frames))
            rows.append((k + 1, k - key + 1, np.median(seq), np.median(dec)))
    return np.array(rows).T


def fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        "| size | PyAV open a (ms) | PyAV per frame b (ms) | decord open c (ms) | "
        "decord per frame d (ms) | break-even skip (c - a) / b (frames) | decord_worth |"
    )
    print("|---|---|---|---|---|---|---|")
    for width, height, frames in ((32, 32, 48), (426, 240, 45)):
        with tempfile.TemporaryDirectory(prefix="mml-decode-paths-") as tmp:
            root = ssv2_like.render(Path(tmp), args.videos, width, height, frames)
            paths = sorted((root / "videos").iterdir())[: args.videos]
            video.probe_all(paths)
            measure(paths[:1], 1)  # warm-up: libraries, caches
            from_zero, after_seek, seq_ms, dec_ms = measure(paths, args.repeats)
        a, b = fit(from_zero, seq_ms)
        c, d = fit(after_seek, dec_ms)
        print(
            f"| {width} x {height}, {frames} frames | {a:.2f} | {b:.3f} | {c:.2f} | {d:.3f} | "
            f"{(c - a) / b:.0f} | {video.decord_worth(height, width):.0f} |"
        )


if __name__ == "__main__":
    main()
