"""The built-in synthetic Something-Something-like dataset: classes told apart only by motion.

Each video shows one target object doing a class motion over a textured background, with camera
jitter, pixel noise and distractors that only stand still or wander. Inverse classes are built
so that no single frame tells them apart: "left to right" is exactly the time reversal of "right
to left" (same for up/down, towards/away, clockwise/counterclockwise, appear/disappear, circles),
and "pushed right and it comes back" is the horizontal mirror of the left one. Rendering is
pure numpy: `plan_video` draws every random choice into a `VideoPlan`, `draw_video` paints it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from mml.fsio import atomic_write_text, remove_temp_files
from mml.workers import run_parallel

# Bump when the rendering changes, so `generate` does not keep videos drawn by older code.
SYNTH_VERSION = 5

CLASS_TEMPLATES: tuple[str, ...] = (
    "Moving [something] from left to right",
    "Moving [something] from right to left",
    "Moving [something] up",
    "Moving [something] down",
    "Moving [something] towards the camera",
    "Moving [something] away from the camera",
    "Making [something] appear",
    "Making [something] disappear",
    "Pushing [something] to the right and it comes back",
    "Pushing [something] to the left and it comes back",
    "Rotating [something] clockwise",
    "Rotating [something] counterclockwise",
    "Moving [something] in a circle clockwise",
    "Moving [something] in a circle counterclockwise",
)
# Classes come in pairs (2k, 2k + 1) of one motion family: the second is the first played
# backwards, except "push", which is mirrored left-right (played backwards it is itself).
# Rotation and orbit come last: a from-scratch TSM learns them much more slowly (a rotating
# tip is a small signal), so the CPU default (`num_classes: 10`) leaves them out.
_FAMILIES = ("horizontal", "vertical", "scale", "appear", "push", "rotate", "orbit")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 20),
    "purple": (130, 50, 170),
    "cyan": (40, 210, 220),
    "magenta": (220, 50, 200),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "pink": (250, 150, 190),
    "brown": (120, 70, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar")
SHAPES += ("L-shape",)
_BACKGROUNDS = ("solid", "gradient", "stripes", "noise", "checker")


@dataclass(frozen=True)
class SynthSpec:
    """Everything that defines the synthetic data (mirrors `mml.config.SynthConfig`)."""

    seed: int = 0
    train_per_class: int = 64
    val_per_class: int = 12
    frames: tuple[int, int] = (24, 40)  # min, max frames per video (inclusive)
    height: int = 64
    width: int = 64
    fps: float = 12.0
    codec: str = "vp9"
    num_classes: int = 10  # the first N of CLASS_TEMPLATES
    distractors: int = 2  # max distractors per video
    jitter: float = 1.5  # px std of camera jitter
    noise: float = 6.0  # pixel noise std (0..255 scale)
    object_scale: float = 1.0  # multiplies every object's size
    bright_objects: bool = True  # objects lighter than a dark background (learnable from scratch)
    dark_share: float = 0.0  # with bright_objects: share of videos with dark objects on light
    texture: float = 1.0  # background contrast: 0 plain colour .. 1 full-contrast texture
    object_texture: float = 0.0  # objects' surface grating amplitude: 0 flat colour .. 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames", tuple(self.frames))  # a list when read from JSON
        low, high = self.frames
        if not 2 <= low <= high:
            raise ValueError(f"SynthSpec.frames must satisfy 2 <= min <= max, got {self.frames}")
        if not 2 <= self.num_classes <= len(CLASS_TEMPLATES):
            raise ValueError(f"SynthSpec.num_classes must be in 2..{len(CLASS_TEMPLATES)}")
        if min(self.height, self.width) < 16:
            raise ValueError(
                f"SynthSpec height/width must be >= 16, got {self.height}x{self.width}"
            )
        if self.train_per_class < 0 or self.val_per_class < 0 or self.distractors < 0:
            raise ValueError("SynthSpec counts (per class, distractors) must be >= 0")


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


# ---------------------------------------------------------------- planning


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _inside(rng: np.random.Generator, margin: float, extent: int) -> float:
    """A coordinate at least `margin` from both ends of [0, extent) (the middle if impossible)."""
    return _uniform(rng, min(margin, extent / 2), max(extent - margin, extent / 2))


def _profile(rng: np.random.Generator, frames: int, start=(0.0, 0.2), end=(0.8, 1.0)) -> np.ndarray:
    """Progress 0 -> 1 over the video: rest, move (linear to smooth-step), rest."""
    a, b = _uniform(rng, *start), _uniform(rng, *end)
    p = np.clip((np.linspace(0, 1, frames) - a) / max(b - a, 1e-6), 0, 1)
    smooth = _uniform(rng, 0, 1)
    return ((1 - smooth) * p + smooth * p * p * (3 - 2 * p)).astype(np.float32)


def surface(rng: np.random.Generator, texture: float) -> tuple[float, float, float, float]:
    """An object's surface pattern (`Track.pattern`): amplitude up to `texture`, 0.6..1.2
    cycles per radius (a period of about 2 to 5 px on the default's objects), any direction."""
    if texture <= 0:
        return (0.0, 1.0, 0.0, 0.0)
    return (
        _uniform(rng, 0.5, 1.0) * texture,
        _uniform(rng, 0.6, 1.2),
        _uniform(rng, 0, np.pi),
        _uniform(rng, 0, 2 * np.pi),
    )


def _choose_colour(rng: np.random.Generator, avoid: list[np.ndarray], exclude=()) -> str:
    """A palette colour far from every colour in `avoid` (random among the far ones)."""
    names = [n for n in COLOURS if n not in exclude]
    gaps = [min(np.linalg.norm(np.subtract(COLOURS[n], a)) for a in avoid) for n in names]
    far = [n for n, g in zip(names, gaps, strict=True) if g >= 110]
    return str(rng.choice(far)) if far else names[int(np.argmax(gaps))]


def _look(rng: np.random.Generator, avoid: list[np.ndarray], exclude=(), tone=None) -> tuple:
    """(shape, colour name, body rgb, tip rgb) of a new object; `tone` "light" lifts it to
    110..255, "dark" lowers it to 0..145 (None: any colour)."""
    shape = str(rng.choice(SHAPES))
    colour = _choose_colour(rng, avoid, exclude)
    tip = _choose_colour(rng, [*avoid, np.asarray(COLOURS[colour])])
    shade = rng.uniform(-15, 15, 3)
    rgb = np.clip(np.add(COLOURS[colour], shade), 0, 255).astype(np.float32)
    tip_rgb = np.asarray(COLOURS[tip], dtype=np.float32)
    if tone is not None:
        low = 110 if tone == "light" else 0
        rgb, tip_rgb = low + rgb * (145 / 255), low + tip_rgb * (145 / 255)
    return shape, colour, rgb, tip_rgb


def tones(rng: np.random.Generator, spec: SynthSpec) -> tuple[str | None, str | None]:
    """(objects' tone, background's tone) of one video: light objects on a dark background, or
    with probability `spec.dark_share` dark objects on a light one (real objects are either);
    (None, None) when `spec.bright_objects` is off: any colours."""
    if not spec.bright_objects:
        return None, None
    if spec.dark_share > 0 and rng.random() < spec.dark_share:
        return "dark", "light"
    return "light", "dark"


def _background(
    rng: np.random.Generator, height: int, width: int, contrast: float = 1.0, tone=None
) -> tuple[np.ndarray, list]:
    """A random texture (H, W, 3) float32 and the colours it mixes (c2 pulled to c1 by 1-contrast).

    `tone` "dark" keeps every channel below 100, under the lifted colours of light objects;
    "light" keeps them above 155, over the lowered colours of dark objects.
    """
    low, high = {"dark": (0, 100), "light": (155, 255)}.get(tone, (0, 255))
    c1, c2 = rng.uniform(low, high, 3), rng.uniform(low, high, 3)
    c2 = c1 + contrast * (c2 - c1)
    kind = str(rng.choice(_BACKGROUNDS))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    phi = _uniform(rng, 0, np.pi)
    along = cols * np.cos(phi) + rows * np.sin(phi)
    if kind == "solid":
        mix = np.zeros((height, width), np.float32)
    elif kind == "gradient":
        mix = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == "stripes":
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * along / _uniform(rng, 5, 16))
    elif kind == "noise":
        coarse = rng.random((int(rng.integers(3, 12)), int(rng.integers(3, 12))), np.float32)
        mix = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    else:  # checker
        cell = int(rng.integers(4, 12))
        mix = ((rows // cell + cols // cell) % 2).astype(np.float32)
    mix = np.clip(mix, 0, 1)[..., None]
    texture = (1 - mix) * c1.astype(np.float32) + mix * c2.astype(np.float32)
    return texture.astype(np.float32), ([c1] if kind == "solid" else [c1, c2])


def camera_shake(rng: np.random.Generator, frames: int, jitter: float) -> tuple[int, np.ndarray]:
    """(pad, shifts): a hand-held camera's smooth sub-pixel shake, (frames, 2) float32 px.

    White noise low-passed over about 3 frames, scaled to a std of `jitter` px per axis and
    clipped to +-pad. A real camera moves smoothly; independent whole-pixel jumps every frame
    (this generator's version 4) gave optical flow mostly camera motion (issue 13).
    """
    pad = int(np.ceil(3 * jitter))
    if jitter <= 0:
        return pad, np.zeros((frames, 2), np.float32)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    white = rng.normal(0, 1, (frames + len(kernel) - 1, 2))
    smooth = np.stack([np.convolve(white[:, i], kernel, "valid") for i in (0, 1)], axis=1)
    smooth *= jitter / np.sqrt((kernel**2).sum())  # unit-variance noise through the filter
    return pad, np.clip(smooth, -pad, pad).astype(np.float32)


def _drift(rng: np.random.Generator, p: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """A small straight drift in a random direction (hand unsteadiness), px per axis."""
    angle, amount = _uniform(rng, 0, 2 * np.pi), _uniform(rng, 0, 0.06 * size)
    return amount * np.cos(angle) * p, amount * np.sin(angle) * p


def _target_motion(
    family: str, rng: np.random.Generator, frames: int, h: int, w: int, scale: float = 1.0
) -> dict:
    """Per-frame x, y, radius, angle, opacity of the target for a family's forward class."""
    size = float(min(h, w))
    r = _uniform(rng, 0.09, 0.15) * size * scale
    p = _profile(rng, frames)
    ones = np.ones(frames, np.float32)
    angle = _uniform(rng, 0, 2 * np.pi) * ones
    ex, ey = _drift(rng, p, size)
    margin = 1.15 * r + 0.06 * size + 1  # whole object in view despite rotation and drift
    cx, cy = _inside(rng, margin, w), _inside(rng, margin, h)
    m = dict(x=cx + ex, y=cy + ey, radius=r * ones, angle=angle, opacity=ones)
    if family in ("horizontal", "vertical", "push"):
        extent = w if family != "vertical" else h
        length = _uniform(rng, 0.6, 0.9) * (extent - 2 * r)  # big enough for a CNN's stride
        centre = extent / 2 + _uniform(rng, -0.5, 0.5) * (extent - 2 * r - length)
        if family == "push":  # out and back: x = start + length * sin(pi * p)
            along = centre - length / 2 + length * np.sin(np.pi * _profile(rng, frames))
        else:
            along = centre - length / 2 + length * p
        if family == "vertical":  # up, so y falls; along the motion no drift, across it a little
            m["x"], m["y"] = cx + 0.3 * ex, h - along
        else:
            m["x"], m["y"] = along, cy + 0.3 * ey
    elif family == "scale":  # geometric growth looks like approaching at constant speed
        # grows 3-4x (edges move ~0.3 px/frame at 32 px, which TV-L1 resolves; 2-3x did not)
        r0, grow = _uniform(rng, 0.04, 0.06) * size * scale, _uniform(rng, 3.0, 4.0)
        m["radius"] = r0 * grow**p
        margin = 1.15 * r0 * grow + 0.06 * size
        m["x"], m["y"] = _inside(rng, margin, w) + ex, _inside(rng, margin, h) + ey
    elif family == "rotate":
        m["angle"] = angle + _uniform(rng, 1.0, 1.6) * np.pi * p
    elif family == "appear":  # fade in over a window of >= 3 frames, so mid frames are partial
        start = _uniform(rng, 0.15, 0.5)
        span = max(_uniform(rng, 0.08, 0.35), 3.5 / frames)
        m["opacity"] = _profile(rng, frames, (start, start), (start + span, start + span))
    elif family == "orbit":
        orbit = _uniform(rng, 0.15, 0.24) * size
        ox, oy = _inside(rng, orbit + r, w), _inside(rng, orbit + r, h)
        phase = _uniform(rng, 0, 2 * np.pi) + _uniform(rng, 1.0, 1.8) * np.pi * p
        m["x"], m["y"] = ox + orbit * np.sin(phase), oy - orbit * np.cos(phase)
    else:
        raise ValueError(f"unknown motion family {family!r}")
    return {k: np.asarray(v, np.float32) for k, v in m.items()}


def _distractor(
    rng: np.random.Generator, frames: int, h: int, w: int, look: tuple, scale: float = 1.0
) -> Track:
    """An object that stands still or wanders (a random walk, no consistent direction)."""
    r = _uniform(rng, 0.06, 0.12) * min(h, w) * scale
    steps = rng.normal(0, 0.7, (frames, 2)) * (rng.random() < 0.5)
    walk = np.cumsum(steps, axis=0) - steps[0]
    x = np.clip(_uniform(rng, r, w - r) + walk[:, 0], 0, w - 1).astype(np.float32)
    y = np.clip(_uniform(rng, r, h - r) + walk[:, 1], 0, h - 1).astype(np.float32)
    ones = np.ones(frames, np.float32)
    angle = _uniform(rng, 0, 2 * np.pi) * ones
    return Track(*look, x=x, y=y, radius=r * ones, angle=angle, opacity=ones)


def plan_video(class_id: int, rng: np.random.Generator, spec: SynthSpec) -> VideoPlan:
    """Draw every random choice of one video of class `class_id`."""
    if not 0 <= class_id < spec.num_classes:
        raise ValueError(f"class_id {class_id} out of range 0..{spec.num_classes - 1}")
    h, w = spec.height, spec.width
    frames = int(rng.integers(spec.frames[0], spec.frames[1] + 1))
    pad, shifts = camera_shake(rng, frames, spec.jitter)
    tone, bg_tone = tones(rng, spec)
    background, bg_colours = _background(rng, h + 2 * pad, w + 2 * pad, spec.texture, bg_tone)
    family, inverse = _FAMILIES[class_id // 2], class_id % 2 == 1
    target_look = _look(rng, bg_colours, tone=tone)
    motion = _target_motion(family, rng, frames, h, w, spec.object_scale)
    target = Track(*target_look, **motion, pattern=surface(rng, spec.object_texture))
    tracks = []
    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        look = _look(rng, bg_colours, exclude=(target_look[1],), tone=tone)
        distractor = _distractor(rng, frames, h, w, look, spec.object_scale)
        tracks.append(replace(distractor, pattern=surface(rng, spec.object_texture)))
    depth = int(rng.integers(0, len(tracks) + 1))
    tracks.insert(depth, target)
    noise_seed = int(rng.integers(2**63))
    if inverse and family == "push":  # pushed the other way: mirror the target's path
        tracks[depth] = replace(target, x=(w - 1 - target.x).astype(np.float32))
    elif inverse:  # the inverse class is the same video played backwards
        shifts = shifts[::-1].copy()
        tracks = [_reverse(t) for t in tracks]
    return VideoPlan(
        class_id, h, w, background, shifts, tuple(tracks), depth, spec.noise, noise_seed
    )


def _reverse(track: Track) -> Track:
    fields = ("x", "y", "radius", "angle", "opacity")
    return replace(track, **{f: getattr(track, f)[::-1].copy() for f in fields})


# ---------------------------------------------------------------- drawing


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
    if plan.noise > 0:
        rng = np.random.default_rng(plan.noise_seed)
        video += rng.standard_normal(video.shape, dtype=np.float32) * np.float32(plan.noise)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the dataset on disk


def _layout(spec: SynthSpec) -> list[tuple[int, str]]:
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


def _video_rng(spec: SynthSpec, number: int) -> np.random.Generator:
    """Video `number` (1-based) has its own stream, so output does not depend on workers/order."""
    return np.random.default_rng(np.random.SeedSequence([spec.seed, number]))


def _make_video(task: tuple[SynthSpec, int, int, Path, bool]) -> list[str]:
    """Write one video (unless `keep` and it exists); return its placeholders."""
    from mml.data.video import write_video

    spec, number, class_id, path, keep = task
    plan = plan_video(class_id, _video_rng(spec, number), spec)
    if not (keep and path.exists()):
        write_video(path, draw_video(plan), spec.fps, spec.codec)
    return plan.placeholders


def remove_stale(video_dir: Path, paths: list[Path]) -> None:
    """Delete videos not in `paths` (of a larger earlier spec) and temp files of a killed run."""
    remove_temp_files(video_dir)
    for stale in {*video_dir.glob("*.webm"), *video_dir.glob("*.mp4")} - set(paths):
        stale.unlink()


def _spec_json(spec: SynthSpec) -> dict:
    return {"synth_version": SYNTH_VERSION, **asdict(spec), "frames": list(spec.frames)}


def generate(
    out_dir: Path,
    spec: SynthSpec,
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write out_dir/videos/<id>.webm, labels.json, train.json, validation.json and spec.json.

    spec.json is written last and only describes a complete directory: when it matches `spec`,
    existing videos are kept (every file is written atomically, so an existing one is whole);
    otherwise every video is redrawn. Re-running with the same spec gives identical files.
    """
    from mml.data.annotations import write_ssv2

    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "spec.json"
    keep = spec_path.exists() and json.loads(spec_path.read_text()) == _spec_json(spec)
    spec_path.unlink(missing_ok=True)  # until this run completes, the directory is unverified
    layout = _layout(spec)
    suffix = ".mp4" if spec.codec == "h264" else ".webm"  # what mml.data.video writes
    paths = [video_dir / f"{n}{suffix}" for n in range(1, len(layout) + 1)]
    tasks = [(spec, n, c, paths[n - 1], keep) for n, (c, _) in enumerate(layout, start=1)]
    placeholders = run_parallel(
        _make_video, tasks, workers if workers > 1 else 0, progress=progress
    )
    remove_stale(video_dir, paths)
    classes = [t.replace("[", "").replace("]", "") for t in CLASS_TEMPLATES[: spec.num_classes]]
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
        write_ssv2(classes, entries, out_dir / "labels.json", out_dir / f"{split}.json")
    atomic_write_text(spec_path, json.dumps(_spec_json(spec), indent=1) + "\n")
