"""The synthetic dataset: deterministic, balanced, SSv2-readable, classes told by motion only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from videos import render_video, synth_config

from mml.data.annotations import label_counts, read_ssv2
from mml.data.synth import (
    CLASS_TEMPLATES,
    draw_video,
    generate,
    plan_video,
    track_alpha,
)

CLEAN = synth_config(
    distractors=0, jitter=0.0, noise=0.0, exposure=0.0, num_classes=len(CLASS_TEMPLATES)
)
SEEDS = range(6)


def _class(template: str) -> int:
    return CLASS_TEMPLATES.index(template)


def _target_moments(class_id: int, seed: int) -> dict[str, np.ndarray]:
    """Per-frame mass, centroid (x, y) and tip direction of the target, from its coverage."""
    plan = plan_video(class_id, np.random.default_rng(seed), CLEAN)
    body, tip = track_alpha(plan.tracks[plan.target], CLEAN.height, CLEAN.width)
    rows, cols = np.mgrid[0 : CLEAN.height, 0 : CLEAN.width]
    mass = body.sum(axis=(1, 2))
    safe = np.maximum(mass, 1e-6)
    x, y = (body * cols).sum(axis=(1, 2)) / safe, (body * rows).sum(axis=(1, 2)) / safe
    tip_mass = np.maximum(tip.sum(axis=(1, 2)), 1e-6)
    tx, ty = (tip * cols).sum(axis=(1, 2)) / tip_mass, (tip * rows).sum(axis=(1, 2)) / tip_mass
    # clockwise on screen (y down) = growing atan2(dx, -dy): 0 is up, pi/2 is right
    heading = np.unwrap(np.arctan2(tx - x, -(ty - y)))
    return {"mass": mass, "x": x, "y": y, "heading": heading}


def test_render_video_is_deterministic():
    spec = synth_config()
    a, names_a = render_video(3, np.random.default_rng(7), spec)
    b, names_b = render_video(3, np.random.default_rng(7), spec)
    c, _ = render_video(3, np.random.default_rng(8), spec)
    assert a.dtype == np.uint8 and a.shape[1:] == (spec.height, spec.width, 3)
    assert spec.frames[0] <= len(a) <= spec.frames[1]
    np.testing.assert_array_equal(a, b)
    assert names_a == names_b and len(names_a) == 1
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_pixels_show_the_target_where_its_coverage_is():
    plan = plan_video(_class("Moving [something] up"), np.random.default_rng(1), CLEAN)
    frames = draw_video(plan).astype(np.float32)
    changed = np.abs(frames - plan.background[None]).sum(-1) > 30
    body, _ = track_alpha(plan.tracks[plan.target], CLEAN.height, CLEAN.width)
    rows = np.arange(CLEAN.height)[None, :, None]
    y_pixels = (changed * rows).sum(axis=(1, 2)) / changed.sum(axis=(1, 2))
    y_alpha = (body * rows).sum(axis=(1, 2)) / body.sum(axis=(1, 2))
    np.testing.assert_allclose(y_pixels, y_alpha, atol=1.0)


@pytest.mark.parametrize(
    ("forward", "backward"),
    [
        ("Moving [something] from left to right", "Moving [something] from right to left"),
        ("Moving [something] down", "Moving [something] up"),
        ("Moving [something] towards the camera", "Moving [something] away from the camera"),
        ("Rotating [something] clockwise", "Rotating [something] counterclockwise"),
        ("Making [something] appear", "Making [something] disappear"),
        (
            "Moving [something] in a circle clockwise",
            "Moving [something] in a circle counterclockwise",
        ),
    ],
)
def test_inverse_classes_are_the_same_frames_played_backwards(forward, backward):
    # so the set of frames (what a single-frame model sees) cannot tell the pair apart
    spec = synth_config(noise=0.0, distractors=2, num_classes=len(CLASS_TEMPLATES))
    for seed, exposure in ((0, 0.0), (1, 0.0), (2, 0.0), (3, 0.2)):
        spec = spec.model_copy(update={"exposure": exposure})  # the camera's gain reverses too
        a, names_a = render_video(_class(forward), np.random.default_rng(seed), spec)
        b, names_b = render_video(_class(backward), np.random.default_rng(seed), spec)
        np.testing.assert_array_equal(a[::-1], b)
        assert names_a == names_b


def test_exposure_scales_whole_frames_and_changes_nothing_else():
    plain = synth_config(noise=0.0, exposure=0.0, num_classes=len(CLASS_TEMPLATES))
    exposed = plain.model_copy(update={"exposure": 0.1})
    logs = []
    for seed in range(40):
        a = plan_video(seed % 14, np.random.default_rng(seed), plain)
        b = plan_video(seed % 14, np.random.default_rng(seed), exposed)
        assert a.gains is None  # off: the plan (and so the video) is what it was without it
        # the same scene, objects and shake: the gain comes from a stream of its own
        assert a.noise_seed == b.noise_seed and np.array_equal(a.shifts, b.shifts)
        assert all(np.array_equal(s.x, t.x) for s, t in zip(a.tracks, b.tracks, strict=True))
        frames_a, frames_b = draw_video(a).astype(float), draw_video(b).astype(float)
        gain = b.gains[:, None, None, None]
        inside = (frames_a > 0) & (frames_a * gain < 254)  # neither frame clipped
        # each pixel is the plain one times its frame's gain, up to both frames' rounding
        error = np.abs(frames_b - frames_a * gain)[inside]
        assert error.max() <= 0.5 + 0.5 * gain.max() + 1e-3
        logs.append(np.log(b.gains))
    # a slow drift of the stated size: std about `exposure`, neighbouring frames alike
    everything = np.concatenate(logs)
    assert 0.07 < everything.std() < 0.13
    steps = np.concatenate([np.diff(x) for x in logs])
    assert steps.std() < 0.35 * everything.std()


def _rises(values: np.ndarray, by: float) -> bool:
    """Ends at least `by` above where it starts, never stepping down noticeably."""
    return values[-1] - values[0] >= by and np.diff(values).min() > -0.05 * by


def test_horizontal_motion_direction():
    for seed in SEEDS:
        lr = _target_moments(_class("Moving [something] from left to right"), seed)["x"]
        rl = _target_moments(_class("Moving [something] from right to left"), seed)["x"]
        assert _rises(lr, 0.15 * CLEAN.width) and _rises(-rl, 0.15 * CLEAN.width)


def test_vertical_motion_direction():
    for seed in SEEDS:
        up = _target_moments(_class("Moving [something] up"), seed)["y"]
        down = _target_moments(_class("Moving [something] down"), seed)["y"]
        assert _rises(-up, 0.15 * CLEAN.height) and _rises(down, 0.15 * CLEAN.height)


def test_scale_direction():
    for seed in SEEDS:
        towards = _target_moments(_class("Moving [something] towards the camera"), seed)["mass"]
        away = _target_moments(_class("Moving [something] away from the camera"), seed)["mass"]
        assert towards[-1] > 3 * towards[0] and _rises(towards, towards[0])
        assert away[0] > 3 * away[-1] and _rises(away[::-1], away[-1])


def test_rotation_direction():
    for seed in SEEDS:
        cw = _target_moments(_class("Rotating [something] clockwise"), seed)["heading"]
        ccw = _target_moments(_class("Rotating [something] counterclockwise"), seed)["heading"]
        assert _rises(cw, np.pi / 2) and _rises(-ccw, np.pi / 2)


def test_appear_and_disappear_pass_through_partial_opacity():
    for seed in SEEDS:
        appear = _target_moments(_class("Making [something] appear"), seed)["mass"]
        gone = _target_moments(_class("Making [something] disappear"), seed)["mass"]
        full = appear.max()
        assert appear[0] == 0 and _rises(appear, 0.9 * full)
        assert gone[-1] == 0 and gone[0] >= 0.9 * gone.max()
        partial = (appear > 0.1 * full) & (appear < 0.9 * full)
        assert partial.sum() >= 2  # some middle frames show a half-transparent object


def test_push_goes_out_and_comes_back():
    for seed in SEEDS:
        for template, sign in [
            ("Pushing [something] to the right and it comes back", 1),
            ("Pushing [something] to the left and it comes back", -1),
        ]:
            x = sign * _target_moments(_class(template), seed)["x"]
            assert x.max() - x[0] >= 0.15 * CLEAN.width
            assert abs(x[-1] - x[0]) < 0.5 and 0.2 < x.argmax() / len(x) < 0.8


def test_circle_direction():
    for seed in SEEDS:
        for template, sign in [
            ("Moving [something] in a circle clockwise", 1),
            ("Moving [something] in a circle counterclockwise", -1),
        ]:
            m = _target_moments(_class(template), seed)
            # shoelace area of the closed path: positive when clockwise on screen (y down)
            x, y = m["x"], m["y"]
            area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
            assert sign * area > 50


# ---------------------------------------------------------------- the dataset on disk

TINY = synth_config(train_per_class=2, val_per_class=1, frames=(6, 9), height=32, width=32)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    calls: list[tuple[int, int]] = []
    generate(out, TINY, progress=lambda done, total: calls.append((done, total)))
    total = TINY.num_classes * (TINY.train_per_class + TINY.val_per_class)
    assert calls[-1] == (total, total) and len(calls) == total
    return out


def test_generate_writes_a_balanced_ssv2_dataset(tiny):
    from mml.data.video import num_frames

    videos = tiny / "videos"
    classes = [t.replace("[", "").replace("]", "") for t in CLASS_TEMPLATES[: TINY.num_classes]]
    for split, per_class in [("train", TINY.train_per_class), ("validation", TINY.val_per_class)]:
        ann = read_ssv2(tiny / "labels.json", tiny / f"{split}.json", videos)
        assert list(ann.classes) == classes
        assert label_counts(ann).tolist() == [per_class] * TINY.num_classes
        for record in ann.records:
            assert TINY.frames[0] <= num_frames(record.path) <= TINY.frames[1]
        entry = json.loads((tiny / f"{split}.json").read_text())[0]
        assert entry["label"] == entry["template"].replace("[something]", entry["placeholders"][0])
    ids = sorted(int(p.stem) for p in videos.glob("*.webm"))
    assert ids == list(range(1, TINY.num_classes * 3 + 1))
    spec = json.loads((tiny / "spec.json").read_text())
    assert spec["seed"] == TINY.seed and spec["frames"] == list(TINY.frames)


def test_generate_is_reproducible_and_independent_of_workers(tiny, tmp_path):
    from mml.data.video import num_frames, read_frames

    before = _files(tiny)
    generate(tiny, TINY)  # re-run over the existing directory
    assert _files(tiny) == before
    again = tmp_path / "again"
    generate(again, TINY, workers=2)
    assert _files(again) == before
    for video_id in ("1", "7"):
        a, b = tiny / "videos" / f"{video_id}.webm", again / "videos" / f"{video_id}.webm"
        indices = np.arange(num_frames(a))
        np.testing.assert_array_equal(read_frames(a, indices), read_frames(b, indices))


def test_generate_with_another_spec_replaces_everything(tiny, tmp_path):
    other = synth_config(**{**TINY.model_dump(), "seed": 1, "train_per_class": 1})
    changed = tmp_path / "changed"
    changed.mkdir()
    for name, data in _files(tiny).items():
        (changed / name).parent.mkdir(parents=True, exist_ok=True)
        (changed / name).write_bytes(data)
    generate(changed, other)
    fresh = tmp_path / "fresh"
    generate(fresh, other)
    assert _files(changed) == _files(fresh)
    assert _files(fresh)["videos/1.webm"] != _files(tiny)["videos/1.webm"]  # another seed


def test_camera_shake_is_smooth_and_sub_pixel():
    from mml.data.synth import camera_shake

    pad, shifts = camera_shake(np.random.default_rng(0), 4000, 2.0)
    assert pad == 6 and np.abs(shifts).max() <= pad
    np.testing.assert_allclose(shifts.std(axis=0), 2.0, rtol=0.15)
    steps = np.abs(np.diff(shifts, axis=0))
    assert steps.mean() < 0.6  # a hand-held camera drifts; it does not jump 2 px every frame
    assert (shifts != np.rint(shifts)).mean() > 0.99  # sub-pixel: rendered by interpolation
    assert not camera_shake(np.random.default_rng(0), 10, 0.0)[1].any()


def test_object_texture_is_painted_on_the_object_and_moves_with_it():
    from dataclasses import replace

    from mml.data.synth import track_shade

    spec = CLEAN.model_copy(update={"object_texture": 0.8})
    left_to_right = _class("Moving [something] from left to right")
    plan = plan_video(left_to_right, np.random.default_rng(2), spec)
    track = plan.tracks[plan.target]
    assert track.pattern[0] > 0.3
    shade = track_shade(track, spec.height, spec.width)
    body, _ = track_alpha(track, spec.height, spec.width)
    inside = body > 0.99
    assert shade[inside].std() > 0.05  # a pattern, not a flat colour
    # the grating is fixed to the object: at the object's centre it never changes
    centre = [shade[t, int(round(track.y[t])), int(round(track.x[t]))] for t in range(len(shade))]
    moved = track.x[-1] - track.x[0]
    assert moved > 5 and np.ptp(centre) < 0.25
    flat = replace(track, pattern=(0.0, 1.0, 0.0, 0.0))
    assert (track_shade(flat, spec.height, spec.width) == 1).all()


def test_dark_share_puts_dark_objects_on_light_backgrounds_in_that_share_of_videos():

    from mml.data.synth import tones

    def target_minus_background(seed: int, share: float) -> float:
        spec = CLEAN.model_copy(update={"dark_share": share})
        plan = plan_video(_class("Moving [something] up"), np.random.default_rng(seed), spec)
        body, _ = track_alpha(plan.tracks[plan.target], spec.height, spec.width)
        frames = draw_video(plan).astype(np.float32).mean(-1)
        inside, outside = body > 0.99, body < 0.01
        return float(frames[inside].mean() - frames[outside].mean())

    assert all(target_minus_background(seed, 0.0) > 30 for seed in SEEDS)
    assert all(target_minus_background(seed, 1.0) < -30 for seed in SEEDS)
    rng, spec = np.random.default_rng(0), CLEAN.model_copy(update={"dark_share": 0.3})
    dark = np.mean([tones(rng, spec)[0] == "dark" for _ in range(4000)])
    assert abs(dark - 0.3) < 0.03
    assert tones(rng, spec.model_copy(update={"bright_objects": False})) == (None, None)
