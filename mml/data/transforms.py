"""Spatial transforms for clips: TSN multi-scale crop (train), centre crop (test), normalisation.

A clip is a uint8 array (T, H, W, C). Every frame of a clip (and, later, every modality of
it) gets the same crop, so motion between frames is preserved. Crops are taken in the
original frame's coordinates and resized once to `crop_size`, which is the same as first
resizing the short side to `scale_size` and cropping there, at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Crop:
    """A crop box in source pixels plus whether to flip it horizontally."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def multiscale_crop(
    height: int,
    width: int,
    *,
    scale_size: int,
    crop_size: int,
    scales: tuple[float, ...],
    max_distort: int,
    flip: bool,
    rng: np.random.Generator,
) -> Crop:
    """TSN's GroupMultiScaleCrop box with fixed offsets (13 positions) and random flip.

    Sizes are `scale * short side`, snapped to the crop size within 3 px (at the
    `scale_size` resolution); width and height scales differ by at most `max_distort` steps.
    """
    ratio = min(height, width) / scale_size
    base = scale_size
    sizes = [int(base * s) for s in scales]
    sizes = [crop_size if abs(s - crop_size) < 3 else s for s in sizes]
    pairs = [
        (w, h)
        for i, h in enumerate(sizes)
        for j, w in enumerate(sizes)
        if abs(i - j) <= max_distort
    ]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    cw = min(width, max(1, round(cw * ratio)))
    ch = min(height, max(1, round(ch * ratio)))
    top, left = _fixed_offsets(height, width, ch, cw)[int(rng.integers(13))]
    return Crop(top, left, ch, cw, flip=bool(flip and rng.random() < 0.5))


def _fixed_offsets(height: int, width: int, ch: int, cw: int) -> list[tuple[int, int]]:
    """TSN's 'more_fix_crop' positions: corners, centre, edge midpoints, quarter points."""
    ys, xs = (height - ch) // 4, (width - cw) // 4
    # rows: corners + centre, edge midpoints, quarter points; (y, x) in quarters of the slack
    grid = [
        (0, 0), (0, 4), (4, 0), (4, 4), (2, 2),
        (2, 0), (2, 4), (0, 2), (4, 2),
        (1, 1), (1, 3), (3, 1), (3, 3),
    ]  # fmt: skip
    return [(y * ys, x * xs) for y, x in grid]


def center_crop(height: int, width: int, *, scale_size: int, crop_size: int) -> Crop:
    """The test crop: resize short side to `scale_size`, take the centre `crop_size` square."""
    ratio = min(height, width) / scale_size
    ch = min(height, max(1, round(crop_size * ratio)))
    cw = min(width, max(1, round(crop_size * ratio)))
    return Crop((height - ch) // 2, (width - cw) // 2, ch, cw)


def apply_crop(clip: np.ndarray, crop: Crop, crop_size: int) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float32 (..., C, crop_size, crop_size) in [0, 1]."""
    box = clip[..., crop.top : crop.top + crop.height, crop.left : crop.left + crop.width, :]
    x = torch.from_numpy(np.ascontiguousarray(box))
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (crop_size, crop_size):
        x = F.interpolate(
            x, size=(crop_size, crop_size), mode="bilinear", align_corners=False, antialias=True
        )
    if crop.flip:
        x = x.flip(-1)
    return x.reshape(*lead, *x.shape[1:])


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel (x - mean) / std on a (..., C, H, W) tensor; mean/std repeat to C."""
    channels = x.shape[-3]
    reps = channels // len(mean)
    m = torch.tensor(mean * reps, dtype=x.dtype).view(channels, 1, 1)
    s = torch.tensor(std * reps, dtype=x.dtype).view(channels, 1, 1)
    return (x - m) / s
