"""The built-in synthetic Something-Something-like dataset: classes told apart only by motion.

Each video shows one target object doing a class motion over a textured background, with camera
jitter, pixel noise and distractors that only stand still or wander. Inverse classes are built
so that no single frame tells them apart: "left to right" is exactly the time reversal of "right
to left" (same for up/down, towards/away, clockwise/counterclockwise, appear/disappear, circles),
and "pushed right and it comes back" is the horizontal mirror of the left one. Rendering is
pure numpy: `plan_video` draws every random choice into a `VideoPlan`, `draw_video` paints it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mml.config import SynthConfig
from mml.data.annotations import write_ssv2
from mml.data.synth.draw import Track, VideoPlan, draw_video
from mml.data.synth.files import (
    finish_output,
    remove_stale,
    settings_record,
    start_output,
    video_paths,
)
from mml.data.synth.plan import (
    CLASS_TEMPLATES,
    FAMILIES,
    class_names,
    distractor,
    exposure_gains,
    mirrored_track,
    object_look,
    plan_scene,
    reversed_track,
    surface,
    target_motion,
)
from mml.data.video import write_video
from mml.workers import run_parallel

# Bump when the planning or drawing changes, so `generate` does not keep videos of older code
# (mml.data.synth.charades records it as its renderer's version).
SYNTH_VERSION = 5


def plan_video(class_id: int, rng: np.random.Generator, spec: SynthConfig) -> VideoPlan:
    """Draw every random choice of one video of class `class_id`."""
    if not 0 <= class_id < spec.num_classes:
        raise ValueError(f"class_id {class_id} out of range 0..{spec.num_classes - 1}")
    h, w = spec.height, spec.width
    scene = plan_scene(rng, spec)
    frames, shifts = scene.frames, scene.shifts
    family, inverse = FAMILIES[class_id // 2], class_id % 2 == 1
    target_look = object_look(rng, scene.background_colours, tone=scene.tone)
    motion = target_motion(family, rng, frames, h, w, spec.object_scale)
    target = Track(*target_look, **motion, pattern=surface(rng, spec.object_texture))
    tracks = []
    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        look = object_look(
            rng, scene.background_colours, exclude=(target_look[1],), tone=scene.tone
        )
        other = distractor(rng, frames, h, w, look, spec.object_scale)
        tracks.append(replace(other, pattern=surface(rng, spec.object_texture)))
    depth = int(rng.integers(0, len(tracks) + 1))
    tracks.insert(depth, target)
    noise_seed = int(rng.integers(2**63))
    gains = exposure_gains(noise_seed, frames, spec.exposure)
    if inverse and family == "push":  # pushed the other way: mirror the target's path
        tracks[depth] = mirrored_track(target, w)
    elif inverse:  # the inverse class is the same video played backwards
        shifts = shifts[::-1].copy()
        gains = None if gains is None else gains[::-1].copy()
        tracks = [reversed_track(t) for t in tracks]
    return VideoPlan(
        class_id,
        h,
        w,
        scene.background,
        shifts,
        tuple(tracks),
        depth,
        spec.noise,
        noise_seed,
        gains,
    )


def _layout(spec: SynthConfig) -> list[tuple[int, str]]:
    """(class id, split) of videos 1..N: balanced per split, shuffled so ids hide the class."""
    items = [
        (c, split)
        for split, per_class in (
            ("train", spec.train_per_class),
            ("validation", spec.val_per_class),
        )
        for c in range(spec.num_classes)
        for _ in range(per_class)
    ]
    order = np.random.default_rng(np.random.SeedSequence([spec.seed, 0])).permutation(len(items))
    return [items[i] for i in order]


def _video_rng(spec: SynthConfig, number: int) -> np.random.Generator:
    """Video `number` (1-based) has its own stream, so output does not depend on workers/order."""
    return np.random.default_rng(np.random.SeedSequence([spec.seed, number]))


def _make_video(task: tuple[SynthConfig, int, int, Path, bool]) -> list[str]:
    """Write one video (unless `keep` and it exists); return its placeholders."""
    spec, number, class_id, path, keep = task
    plan = plan_video(class_id, _video_rng(spec, number), spec)
    if not (keep and path.exists()):
        write_video(path, draw_video(plan), spec.fps, spec.codec)
    return plan.placeholders


def _record(spec: SynthConfig) -> dict:
    """What spec.json holds: the version and every setting."""
    return {"synth_version": SYNTH_VERSION, **settings_record(spec)}


def generate(
    out_dir: Path,
    spec: SynthConfig,
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write out_dir/videos/<id>.webm, labels.json, train.json, validation.json and spec.json.

    Existing videos are kept when spec.json matches (see mml.data.synth.files). Re-running
    with the same spec gives identical files, whatever `workers` is (1: this process).
    `spec.multilabel` and `spec.actions` (the Charades-like variant's) are not used.
    """
    out_dir = Path(out_dir)
    record = _record(spec)
    keep = start_output(out_dir, record)
    layout = _layout(spec)
    paths = video_paths(out_dir, len(layout), spec.codec)
    tasks = [(spec, n, c, paths[n - 1], keep) for n, (c, _) in enumerate(layout, start=1)]
    placeholders = run_parallel(
        _make_video, tasks, workers if workers > 1 else 0, progress=progress
    )
    remove_stale(out_dir, paths)
    for split in ("train", "validation"):
        entries = [
            {
                "id": str(n),
                "label": CLASS_TEMPLATES[c].replace("[something]", names[0]),
                "template": CLASS_TEMPLATES[c],
                "placeholders": names,
            }
            for n, ((c, s), names) in enumerate(zip(layout, placeholders, strict=True), start=1)
            if s == split
        ]
        classes = class_names(spec.num_classes)
        write_ssv2(classes, entries, out_dir / "labels.json", out_dir / f"{split}.json")
    finish_output(out_dir, record)
