"""The built-in synthetic datasets: videos whose classes are told apart only by motion.

plan.py      every random choice of a video: looks, backgrounds, motions, camera shake
draw.py      objects (`Track`) and videos (`VideoPlan`) painted in numpy
files.py     the dataset on disk: videos, spec.json (incremental, atomic)
motion.py    the Something-Something-like dataset: one action per video (SSv2 format)
charades.py  the Charades-like variant: several actions per video (Charades CSVs)

`generate(out_dir, config)` writes the dataset that `config` (params.yaml's `synth`) describes.
"""

from collections.abc import Callable
from pathlib import Path

from mml.config import SynthConfig
from mml.data.synth import charades, motion
from mml.data.synth.charades import (
    CLASSES_FILE,
    TRAIN_FILE,
    VAL_FILE,
    check_dataset_config,
    plan_multilabel_video,
)
from mml.data.synth.draw import Track, VideoPlan, draw_video, track_alpha, track_shade
from mml.data.synth.motion import SYNTH_VERSION, plan_video
from mml.data.synth.plan import CLASS_TEMPLATES, camera_shake, tones

__all__ = [
    "CLASSES_FILE",
    "CLASS_TEMPLATES",
    "SYNTH_VERSION",
    "TRAIN_FILE",
    "VAL_FILE",
    "Track",
    "VideoPlan",
    "camera_shake",
    "check_dataset_config",
    "draw_video",
    "generate",
    "plan_multilabel_video",
    "plan_video",
    "tones",
    "track_alpha",
    "track_shade",
]


def generate(
    out_dir: Path,
    config: SynthConfig,
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write the dataset: Charades-like if `config.multilabel`, else Something-Something-like."""
    variant = charades if config.multilabel else motion
    variant.generate(Path(out_dir), config, workers=workers, progress=progress)
