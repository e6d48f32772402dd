"""Planning the synthetic videos: every random choice (looks, backgrounds, motions, shake).

The building blocks of both generators (mml.data.synth.motion, mml.data.synth.charades): each
takes an injected rng, so a video's plan depends only on its own random stream.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from mml.config import SynthConfig
from mml.data.synth.draw import SHAPES, Track

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
# tip is a small signal), so the CPU default (`synth.num_classes`) leaves them out.
FAMILIES = ("horizontal", "vertical", "scale", "appear", "push", "rotate", "orbit")

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
_BACKGROUNDS = ("solid", "gradient", "stripes", "noise", "checker")


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


def object_look(rng: np.random.Generator, avoid: list[np.ndarray], exclude=(), tone=None) -> tuple:
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


def tones(rng: np.random.Generator, spec: SynthConfig) -> tuple[str | None, str | None]:
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
    smooth = _low_passed(rng, frames, 2, sigma=2, std=jitter)
    return pad, np.clip(smooth, -pad, pad).astype(np.float32)


def _low_passed(rng: np.random.Generator, frames: int, axes: int, *, sigma: int, std: float):
    """(frames, axes) float64 white noise through a Gaussian of `sigma` frames (cut at 3 sigma),
    scaled to a std of `std` per axis: a slow random drift."""
    kernel = np.exp(-0.5 * (np.arange(-3 * sigma, 3 * sigma + 1) / sigma) ** 2)
    white = rng.normal(0, 1, (frames + len(kernel) - 1, axes))
    smooth = np.stack([np.convolve(white[:, i], kernel, "valid") for i in range(axes)], axis=1)
    return smooth * (std / np.sqrt((kernel**2).sum()))  # unit-variance noise through the filter


def exposure_gains(noise_seed: int, frames: int, exposure: float) -> np.ndarray | None:
    """(frames,) float32 brightness gains of a camera whose auto-exposure drifts, or None.

    A phone camera (Something-Something's are hand-held phones) keeps re-adjusting its exposure
    and white balance, so the whole frame brightens and darkens slowly: white noise low-passed
    over about 6 frames (half a second at 12 fps), scaled to a std of `exposure` in log gain.
    Frame differences see every such change; a single frame barely does. Drawn from a stream of
    its own (derived from the video's `noise_seed`), so that every other choice of the video is
    the same with or without it.
    """
    if exposure <= 0:
        return None
    rng = np.random.default_rng([noise_seed, 1])
    return np.exp(_low_passed(rng, frames, 1, sigma=4, std=exposure)[:, 0]).astype(np.float32)


def _drift(rng: np.random.Generator, p: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """A small straight drift in a random direction (hand unsteadiness), px per axis."""
    angle, amount = _uniform(rng, 0, 2 * np.pi), _uniform(rng, 0, 0.06 * size)
    return amount * np.cos(angle) * p, amount * np.sin(angle) * p


def target_motion(
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


def distractor(
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


def reversed_track(track: Track) -> Track:
    """The same object played backwards."""
    fields = ("x", "y", "radius", "angle", "opacity")
    return replace(track, **{f: getattr(track, f)[::-1].copy() for f in fields})


def mirrored_track(track: Track, width: int) -> Track:
    """The same object with its path mirrored left-right ("pushed" the other way)."""
    return replace(track, x=(width - 1 - track.x).astype(np.float32))


@dataclass(frozen=True)
class Scene:
    """What a video shows besides its objects: length, camera shake, tones, background."""

    frames: int
    shifts: np.ndarray  # (frames, 2) float32, see camera_shake
    tone: str | None  # the objects' tone, see tones
    background: np.ndarray  # (H + 2*pad, W + 2*pad, 3) float32
    background_colours: list  # the colours the background mixes (objects keep away from them)


def plan_scene(rng: np.random.Generator, spec: SynthConfig) -> Scene:
    """The first random choices of every video: its length, shake, tones and background."""
    h, w = spec.height, spec.width
    frames = int(rng.integers(spec.frames[0], spec.frames[1] + 1))
    pad, shifts = camera_shake(rng, frames, spec.jitter)
    tone, bg_tone = tones(rng, spec)
    background, colours = _background(rng, h + 2 * pad, w + 2 * pad, spec.texture, bg_tone)
    return Scene(frames, shifts, tone, background, colours)


def class_names(num_classes: int) -> list[str]:
    """The names of the first `num_classes` classes: their templates without brackets."""
    return [t.replace("[", "").replace("]", "") for t in CLASS_TEMPLATES[:num_classes]]
