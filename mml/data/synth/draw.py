"""Drawing the synthetic videos: objects (`Track`), whole videos (`VideoPlan`), pure numpy.

A plan holds every random choice of a video (see mml.data.synth.plan); `draw_video` paints it
deterministically: jittered background, objects back to front, exposure gain, pixel noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar")
SHAPES += ("L-shape",)


@dataclass(frozen=True)
class Track:
    """One object: its look and its per-frame centre (px), radius (px), angle (rad), opacity.

    angle grows clockwise on screen; at angle 0 the object's coloured tip points up.
    """

    shape: str
    colour: str
    rgb: np.ndarray  # (3,) float32, body colour
    tip_rgb: np.ndarray  # (3,) float32, colour of the tip that makes rotation visible
    x: np.ndarray  # (T,) float32, each below
    y: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    opacity: np.ndarray
    # surface texture: (amplitude 0..1, cycles per object radius, direction rad, phase rad);
    # amplitude 0 is a flat colour
    pattern: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)


@dataclass(frozen=True)
class VideoPlan:
    """All random choices of one video; `draw_video` turns it into frames deterministically."""

    class_id: int
    height: int
    width: int
    background: np.ndarray  # (H + 2*pad, W + 2*pad, 3) float32
    shifts: np.ndarray  # (T, 2) float32, camera shake (dx, dy) in px, |shift| <= pad
    tracks: tuple[Track, ...]  # in drawing order (back to front)
    target: int  # index in `tracks` of the object doing the class motion
    noise: float
    noise_seed: int
    # (T,) float32 per-frame brightness gain of the camera (auto-exposure), or None: constant
    gains: np.ndarray | None = None

    @property
    def placeholders(self) -> list[str]:
        track = self.tracks[self.target]
        return [f"{track.colour} {track.shape}"]


# ---------------------------------------------------------------- shapes


def _box(u: np.ndarray, v: np.ndarray, bu: float, bv: float) -> np.ndarray:
    """Signed distance to an axis-aligned box of half sizes (bu, bv)."""
    qu, qv = np.abs(u) - bu, np.abs(v) - bv
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0)


def _triangle(u: np.ndarray, v: np.ndarray, r: float = 0.85) -> np.ndarray:
    """Signed distance to an equilateral triangle pointing up (Inigo Quilez's formula)."""
    k = np.sqrt(3.0)
    px, py = np.abs(u) - r, -v + r / k
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance in object units (the object fits in the unit disc)."""
    if shape == "circle":
        return np.hypot(u, v) - 0.9
    if shape == "square":
        return _box(u, v, 0.72, 0.72)
    if shape == "triangle":
        return _triangle(u, v)
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 0.95) / np.sqrt(2.0)
    if shape == "cross":
        return np.minimum(_box(u, v, 0.9, 0.3), _box(u, v, 0.3, 0.9))
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.68) - 0.24
    if shape == "bar":
        return _box(u, v, 0.28, 0.95)
    if shape == "L-shape":
        return np.minimum(_box(u + 0.4, v, 0.28, 0.9), _box(u - 0.15, v - 0.62, 0.55, 0.28))
    raise ValueError(f"unknown shape {shape!r} (choose one of {SHAPES})")


def _object_coords(
    track: Track, height: int, width: int, top: int, left: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, radius): each pixel of the window in the object's own units, per frame."""
    cols = np.arange(left, left + width, dtype=np.float32)[None, None, :]
    rows = np.arange(top, top + height, dtype=np.float32)[None, :, None]
    dx, dy = cols - track.x[:, None, None], rows - track.y[:, None, None]
    cos, sin = np.cos(track.angle)[:, None, None], np.sin(track.angle)[:, None, None]
    radius = track.radius[:, None, None]
    return (cos * dx + sin * dy) / radius, (cos * dy - sin * dx) / radius, radius


def track_alpha(
    track: Track, height: int, width: int, *, top: int = 0, left: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of the whole object and of its tip, each (T, height, width) float32 in [0, 1].

    The window starts at pixel (top, left). Includes the opacity; anti-aliased by turning the
    signed distance in pixels into coverage.
    """
    u, v, radius = _object_coords(track, height, width, top, left)
    body = np.clip(0.5 - _shape_distance(track.shape, u, v) * radius, 0, 1)
    body *= track.opacity[:, None, None]
    tip = body * np.clip(0.5 - (v + 0.4) * radius, 0, 1)  # the part with v < -0.4
    return body.astype(np.float32), tip.astype(np.float32)


def track_shade(
    track: Track, height: int, width: int, *, top: int = 0, left: int = 0
) -> np.ndarray:
    """(T, height, width) float32 brightness factor of the object's surface: 1 - amplitude *
    a sinusoidal grating fixed to the object (it moves, turns and grows with it)."""
    amplitude, cycles, direction, phase = track.pattern
    if amplitude == 0:
        return np.ones((len(track.x), height, width), np.float32)
    u, v, _ = _object_coords(track, height, width, top, left)
    along = u * np.cos(direction) + v * np.sin(direction)
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * along + phase)
    return (1 - amplitude * grating).astype(np.float32)


def draw_video(plan: VideoPlan) -> np.ndarray:
    """Paint a plan: jittered background, objects back to front, pixel noise -> (T,H,W,3) uint8."""
    h, w = plan.height, plan.width
    pad = (plan.background.shape[0] - h) // 2
    video = np.empty((len(plan.shifts), h, w, 3), np.float32)
    for t, (dx, dy) in enumerate(plan.shifts):  # the camera moves: the crop window moves back
        centre = (pad - dx + (w - 1) / 2, pad - dy + (h - 1) / 2)  # bilinear, sub-pixel
        video[t] = cv2.getRectSubPix(plan.background, (w, h), centre)
    shift_x = plan.shifts[:, 0].astype(np.float32)
    shift_y = plan.shifts[:, 1].astype(np.float32)
    for track in plan.tracks:
        moved = replace(track, x=track.x + shift_x, y=track.y + shift_y)
        reach = 1.2 * float(track.radius.max()) + 1  # every shape fits in 1.2 radii
        x0, x1 = max(int(moved.x.min() - reach), 0), min(int(moved.x.max() + reach) + 1, w)
        y0, y1 = max(int(moved.y.min() - reach), 0), min(int(moved.y.max() + reach) + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        body, tip = track_alpha(moved, y1 - y0, x1 - x0, top=y0, left=x0)
        shade = track_shade(moved, y1 - y0, x1 - x0, top=y0, left=x0)[..., None]
        region = video[:, y0:y1, x0:x1]  # a view: painting it paints the video
        region += body[..., None] * (shade * track.rgb - region)
        region += tip[..., None] * (track.tip_rgb - region)
    if plan.gains is not None:  # the sensor's exposure scales everything it sees, then noise
        video *= plan.gains[:, None, None, None]
    if plan.noise > 0:
        rng = np.random.default_rng(plan.noise_seed)
        video += rng.standard_normal(video.shape, dtype=np.float32) * np.float32(plan.noise)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)
