"""The Charades-like multi-label variant of the synthetic dataset: several actions per video.

Each video shows K objects (K drawn uniformly from `synth.actions`), each doing the motion of
its own class (K distinct classes), plus the distractors of `mml.data.synth.motion`. Inverse
classes work per object: its track alone is played backwards ("push" is mirrored instead), so two
objects of one family (left to right and right to left) may share a video. Annotations are
Charades CSVs; every action spans the whole video (0 to frames/fps s): real Charades actions
cover sub-intervals, but the loader only uses a video's label set. Rendering, codec, sizes and
the on-disk contract (atomic files, incremental spec.json, determinism) are those of
`mml.data.synth.motion`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mml.config import ConfigError, DatasetConfig, SynthConfig
from mml.data.annotations import write_charades
from mml.data.synth.draw import Track, VideoPlan, draw_video
from mml.data.synth.files import (
    finish_output,
    remove_stale,
    settings_record,
    start_output,
    video_paths,
)
from mml.data.synth.motion import SYNTH_VERSION
from mml.data.synth.plan import (
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
from mml.data.video import suffix_for, write_video
from mml.workers import run_parallel

CLASSES_FILE = "Charades_v1_classes.txt"
TRAIN_FILE = "Charades_v1_train.csv"
VAL_FILE = "Charades_v1_test.csv"  # Charades' test split serves as validation
# Bump when this module's planning changes (motion.SYNTH_VERSION covers the shared parts).
VERSION = 1
# Objects at 3/4 of the SSv2 synth's size: a target's radius is then 7-11% of the frame side
# (4-7 px at 64x64), so up to 3 targets and 2 distractors cover ~20% of the frame instead of
# ~35%, and crossing paths hide each other briefly instead of for most of the video.
SIZE_FACTOR = 0.75
_STREAM = 7  # motion.py seeds video n with [seed, n]; ours are [seed, 7, n], n >= 1


@dataclass(frozen=True)
class MultiLabelPlan(VideoPlan):
    """A `VideoPlan` with several targets: `tracks[targets[i]]` performs class `class_ids[i]`.

    `class_id` and `target` are those of the first action.
    """

    class_ids: tuple[int, ...] = ()
    targets: tuple[int, ...] = ()


def plan_multilabel_video(
    class_ids: Sequence[int], rng: np.random.Generator, spec: SynthConfig
) -> MultiLabelPlan:
    """Draw every random choice of one video in which object i performs class `class_ids[i]`."""
    class_ids = tuple(int(c) for c in class_ids)
    if not class_ids or len(set(class_ids)) < len(class_ids):
        raise ValueError(f"need one or more distinct class ids, got {class_ids}")
    if not all(0 <= c < spec.num_classes for c in class_ids):
        raise ValueError(f"class ids {class_ids} out of range 0..{spec.num_classes - 1}")
    h, w = spec.height, spec.width
    scene = plan_scene(rng, spec)
    frames, colours, tone = scene.frames, scene.background_colours, scene.tone
    scale = SIZE_FACTOR * spec.object_scale
    tracks: list[Track] = []
    used: list[str] = []  # target colours, which no later object takes (of 12, spare 2)
    for c in class_ids:
        look = object_look(rng, colours, exclude=used[-10:], tone=tone)
        used.append(look[1])
        motion = target_motion(FAMILIES[c // 2], rng, frames, h, w, scale)
        track = Track(*look, **motion, pattern=surface(rng, spec.object_texture))
        if c % 2 and FAMILIES[c // 2] == "push":  # pushed the other way: mirror the path
            track = mirrored_track(track, w)
        elif c % 2:  # the inverse class is this object's motion played backwards
            track = reversed_track(track)
        tracks.append(track)
    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        look = object_look(rng, colours, exclude=used[-10:], tone=tone)
        other = distractor(rng, frames, h, w, look, scale)
        tracks.append(replace(other, pattern=surface(rng, spec.object_texture)))
    order = [int(i) for i in rng.permutation(len(tracks))]  # drawing order, back to front
    targets = tuple(order.index(i) for i in range(len(class_ids)))
    noise_seed = int(rng.integers(2**63))
    return MultiLabelPlan(
        class_ids[0],
        h,
        w,
        scene.background,
        scene.shifts,
        tuple(tracks[i] for i in order),
        targets[0],
        spec.noise,
        noise_seed,
        exposure_gains(noise_seed, frames, spec.exposure),
        class_ids=class_ids,
        targets=targets,
    )


def check_dataset_config(dataset: DatasetConfig, source: str, codec: str = "vp9") -> None:
    """Raise ConfigError unless `dataset` reads what `generate` writes (with `codec`)."""
    expected = {
        "format": "charades",
        "labels": CLASSES_FILE,
        "train": TRAIN_FILE,
        "val": VAL_FILE,
        "video_dir": "videos",
        "ext": suffix_for(codec),
    }
    wrong = [(k, getattr(dataset, k), v) for k, v in expected.items() if getattr(dataset, k) != v]
    if wrong:
        found = ", ".join(f"dataset.{k} is {got!r}" for k, got, _ in wrong)
        fix = "\n".join(f"  dataset.{k}: {v}" for k, _, v in wrong)
        raise ConfigError(
            f"{source}: synth.multilabel writes a Charades-format dataset, but {found}. "
            f"Set in {source} (or drop synth.multilabel):\n{fix}"
        )


def _layout(spec: SynthConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(split, class ids) of videos 1..N: per split, each class is used equally often (+-1)."""
    # [seed, 7] and [seed, 7, 0] equal synth.py's stream of video 7 (SeedSequence pads with 0)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _STREAM, 0, 1]))
    low, high = (min(a, spec.num_classes) for a in spec.actions)
    layout = []
    for split, per_class in (("train", spec.train_per_class), ("val", spec.val_per_class)):
        counts = np.zeros(spec.num_classes, int)
        for _ in range(spec.num_classes * per_class):
            k = int(rng.integers(low, high + 1))
            # the k least used classes, ties at random: the counts stay within 1 of each other
            chosen = np.lexsort((rng.random(spec.num_classes), counts))[:k]
            counts[chosen] += 1
            layout.append((split, tuple(int(c) for c in rng.permutation(chosen))))
    return layout


def _make_video(task: tuple[SynthConfig, int, tuple[int, ...], Path, bool]) -> float:
    """Write one video (unless `keep` and it exists); return its length in seconds."""
    spec, number, class_ids, path, keep = task
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _STREAM, number]))
    plan = plan_multilabel_video(class_ids, rng, spec)
    if not (keep and path.exists()):
        write_video(path, draw_video(plan), spec.fps, spec.codec)
    return len(plan.shifts) / spec.fps


def _record(spec: SynthConfig) -> dict:
    """What spec.json holds: the versions, the variant and every setting."""
    return {
        "synth_version": VERSION,
        "renderer_version": SYNTH_VERSION,
        "variant": "charades",
        "actions": list(spec.actions),
        **settings_record(spec),
    }


def generate(
    out_dir: Path,
    spec: SynthConfig,
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write out_dir/videos/<id>.webm (.mp4 for h264), the classes file, both CSVs, spec.json.

    num_classes * train_per_class train videos and num_classes * val_per_class validation
    videos, with min(spec.actions, num_classes) actions each (`spec.multilabel` is not read).
    Existing videos are kept when spec.json matches (see mml.data.synth.files); re-running
    with the same spec gives identical files, whatever `workers` is (1: this process).
    """
    out_dir = Path(out_dir)
    record = _record(spec)
    keep = start_output(out_dir, record)
    layout = _layout(spec)
    paths = video_paths(out_dir, len(layout), spec.codec)
    tasks = [(spec, n, ids, paths[n - 1], keep) for n, (_, ids) in enumerate(layout, start=1)]
    lengths = run_parallel(_make_video, tasks, workers if workers > 1 else 0, progress=progress)
    remove_stale(out_dir, paths)
    for split, csv_name in (("train", TRAIN_FILE), ("val", VAL_FILE)):
        rows = [
            {"id": str(n), "actions": [(c, 0.0, length) for c in sorted(ids)], "length": length}
            for n, ((s, ids), length) in enumerate(zip(layout, lengths, strict=True), start=1)
            if s == split
        ]
        classes = class_names(spec.num_classes)
        write_charades(classes, rows, out_dir / csv_name, out_dir / CLASSES_FILE)
    finish_output(out_dir, record)
