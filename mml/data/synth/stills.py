"""Still frames for pretraining (`mml pretrain`): the synthetic default's stand-in for ImageNet.

Each still is one frame of a video planned as the dataset's are (`plan_video`: the same looks,
backgrounds, tones and camera shake, but no distractor), drawn from a random stream of its own
that shares nothing with the dataset's videos (`synth.seed` does not enter it). Its label is
where the class motion's object is in that frame: the cell of a `GRID` x `GRID` grid that holds
its centre. Object categories, ImageNet's labels, do not work at this size: a shape label at
32 px stayed at chance for 3 epochs (README, *The synthetic dataset*).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mml.config import SynthConfig
from mml.data.synth.draw import Track, VideoPlan, draw_video
from mml.data.synth.motion import plan_video

GRID = 3  # labels: GRID * GRID cells, row-major from the top left
_STREAM = 0x57111  # first entropy word of every still's stream (the dataset's are [seed, n])


def still_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of still `index` of pretraining seed `seed`."""
    return np.random.default_rng(np.random.SeedSequence([_STREAM, seed, index]))


def _one_frame(track: Track, t: int) -> Track:
    keep = slice(t, t + 1)
    return replace(
        track,
        x=track.x[keep],
        y=track.y[keep],
        radius=track.radius[keep],
        angle=track.angle[keep],
        opacity=track.opacity[keep],
    )


def frame_of(plan: VideoPlan, t: int) -> VideoPlan:
    """The one-frame plan of frame `t` of `plan`: `draw_video` of it paints that frame alone."""
    tracks = tuple(_one_frame(track, t) for track in plan.tracks)
    gains = None if plan.gains is None else plan.gains[t : t + 1]
    return replace(plan, shifts=plan.shifts[t : t + 1], tracks=tracks, gains=gains)


def cell(plan: VideoPlan) -> int:
    """The grid cell of the target's centre on screen in a one-frame plan (with camera shake)."""
    target = plan.tracks[plan.target]
    x = float(target.x[0] + plan.shifts[0, 0])
    y = float(target.y[0] + plan.shifts[0, 1])
    col = min(GRID - 1, max(0, int(x * GRID / plan.width)))
    row = min(GRID - 1, max(0, int(y * GRID / plan.height)))
    return row * GRID + col


def render_still(spec: SynthConfig, seed: int, index: int) -> tuple[np.ndarray, int]:
    """Still `index`: an (H, W, 3) uint8 frame and its label (`cell`)."""
    rng = still_rng(seed, index)
    spec = spec.model_copy(update={"distractors": 0})  # one object: "where is it" is well posed
    plan = plan_video(int(rng.integers(spec.num_classes)), rng, spec)
    frame = frame_of(plan, int(rng.integers(len(plan.shifts))))
    return draw_video(frame)[0], cell(frame)


def render_stills(spec: SynthConfig, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Stills 0..count-1: (count, H, W, 3) uint8 frames and (count,) int64 labels."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    frames, labels = zip(*(render_still(spec, seed, i) for i in range(count)), strict=True)
    return np.stack(frames), np.asarray(labels, dtype=np.int64)
