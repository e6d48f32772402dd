"""Soak test of the training loader: hours of epochs over a dataset with broken videos.

Writes a synthetic dataset (seeded), breaks a fraction of its videos (truncated files and
files that are not videos at all), then runs the training loader epoch after epoch for
`--seconds`, and prints clips/s, how many broken videos were skipped (each must be skipped
once per epoch, and no epoch may stop), and the memory of the process and its loader workers:
sampled every few seconds, with the slope of a line fitted after the warm-up. A leak shows as
a positive slope; flat is a slope within noise of 0 MB/min.

    python benchmarks/soak.py [--seconds 300] [--videos 240] [--broken 0.1] [--workers 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import av  # noqa: F401  (before decord: see mml/data/video.py)
import numpy as np
import psutil

from mml.config import ClipConfig, LoaderConfig, SynthConfig
from mml.data.dataset import VideoClips, load_split, make_loader
from mml.data.synth import generate


def break_videos(videos: list[Path], fraction: float, seed: int) -> list[Path]:
    """Break `fraction` of the files: half truncated to a third, half overwritten with text."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(videos), size=round(fraction * len(videos)), replace=False))
    broken = []
    for i, index in enumerate(chosen):
        path = videos[index]
        if i % 2:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        else:
            path.write_text("this is not a video\n")
        broken.append(path)
    return broken


def pss_mb() -> float:
    """Proportional set size of this process and its children (loader workers), in MB: pages
    the forked workers share with the parent are counted once, not once per process."""
    me = psutil.Process()
    total = me.memory_full_info().pss
    for child in me.children(recursive=True):
        try:
            total += child.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--videos", type=int, default=240, help="train videos (6 classes)")
    parser.add_argument("--broken", type=float, default=0.1, help="fraction of broken videos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=30, help="seconds left out of the slope")
    args = parser.parse_args()
    logging.getLogger("mml.data.dataset").setLevel(logging.ERROR)  # skips are counted below

    with tempfile.TemporaryDirectory(prefix="mml-soak-") as tmp:
        root = Path(tmp) / "synthetic"
        spec = SynthConfig(
            seed=11,
            train_per_class=max(1, args.videos // 6),
            val_per_class=1,
            frames=(20, 32),
            height=32,
            width=32,
            num_classes=6,
        )
        generate(root, spec, workers=args.workers or 1)
        from mml.config import DatasetConfig

        ann = load_split(DatasetConfig(root=root), "train")
        broken = break_videos([r.path for r in ann.records], args.broken, seed=5)
        clip = ClipConfig(segments=4, scale_size=32, crop_size=28)
        clips = VideoClips(ann, clip, train=True, seed=0)
        clips.keep_decoded(0)  # every epoch decodes, as at a dataset's real size: that is the soak
        loader_cfg = LoaderConfig(batch_size=args.batch, workers=args.workers)
        print(
            f"{len(ann.records)} videos, {len(broken)} broken; loader: batch {args.batch}, "
            f"{args.workers} workers; {args.seconds:.0f} s"
        )
        start = time.perf_counter()
        samples, clips_seen, skipped, epochs, last_sample = [], 0, 0, 0, -1e9
        while time.perf_counter() - start < args.seconds:
            epoch_skipped = 0
            for batch in make_loader(clips, loader_cfg, shuffle=True, seed=0, epoch=epochs):
                clips_seen += len(batch.ids)
                epoch_skipped += len(batch.skipped)
                now = time.perf_counter() - start
                if now - last_sample >= 2:
                    samples.append((now, pss_mb()))
                    last_sample = now
                if now >= args.seconds:
                    break
            else:  # a whole epoch: every broken video skipped exactly once
                assert epoch_skipped == len(broken), (epoch_skipped, len(broken))
                epochs += 1
            skipped += epoch_skipped
        elapsed = time.perf_counter() - start
    times, memory = np.array(samples).T
    late = times >= min(args.warmup, times.max() / 2)
    slope = np.polyfit(times[late] / 60, memory[late], 1)[0] if late.sum() > 2 else float("nan")
    print("| metric | value |")
    print("|---|---|")
    print(f"| clips/s | {clips_seen / elapsed:.1f} |")
    print(f"| complete epochs | {epochs} |")
    print(f"| broken videos skipped (total, per epoch) | {skipped}, {len(broken)} |")
    print(
        f"| memory at first sample / peak / last (MB) | {memory[0]:.0f} / {memory.max():.0f}"
        f" / {memory[-1]:.0f} |"
    )
    print(f"| memory slope after {args.warmup:.0f} s (MB/min) | {slope:+.2f} |")


if __name__ == "__main__":
    main()
