"""Textured synthetic videos at a chosen size (mml.data.synth), for the benchmarks that measure
at Something-Something v2's size (426 x 240, 45 frames): flow_rate, cache_formats, loader --ssv2.
"""

from __future__ import annotations

from pathlib import Path

from mml.config import SynthConfig
from mml.data.synth import generate


def render(root: Path, videos: int, width: int = 426, height: int = 240, frames: int = 45) -> Path:
    """Write an SSv2-format dataset of 2 classes with `videos` train videos under `root`;
    returns `root`. Its videos are `root/videos/*`; the train split has the `videos` ones."""
    config = SynthConfig(
        seed=0,
        train_per_class=max(1, videos // 2),
        val_per_class=1,
        num_classes=2,
        frames=(frames, frames),
        height=height,
        width=width,
        texture=0.3,
    )
    generate(Path(root), config)
    return Path(root)
