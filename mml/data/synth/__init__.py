"""The built-in synthetic datasets: videos whose classes are told apart only by motion.

plan.py      every random choice of a video: looks, backgrounds, motions, camera shake
draw.py      objects (`Track`) and videos (`VideoPlan`) painted in numpy
files.py     the dataset on disk: videos, spec.json (incremental, atomic)
motion.py    the Something-Something-like dataset: one action per video (SSv2 format)
charades.py  the Charades-like variant: several actions per video (Charades CSVs)
"""

from mml.data.synth.charades import (
    CLASSES_FILE,
    TRAIN_FILE,
    VAL_FILE,
    check_dataset_config,
    plan_multilabel_video,
)
from mml.data.synth.draw import Track, VideoPlan, draw_video, track_alpha, track_shade
from mml.data.synth.motion import SYNTH_VERSION, generate, plan_video
from mml.data.synth.plan import CLASS_TEMPLATES, SynthSpec, camera_shake, tones

__all__ = [
    "CLASSES_FILE",
    "CLASS_TEMPLATES",
    "SYNTH_VERSION",
    "TRAIN_FILE",
    "VAL_FILE",
    "SynthSpec",
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
