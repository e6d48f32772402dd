"""Network inputs straight from a video file, without caches: for prediction and serving.

Any video the decoder opens works: frames are resized so that their short side matches the
videos the model was trained on (portrait, odd sizes and 4K alike), only the frames the test
views need are decoded (long videos stay cheap), and flow / differences are computed for
just the fields those views stack, with the cache's own algorithm and uint8 quantisation, so
the network sees what it saw in training. A one-frame video has no motion: its flow and
differences are zero.

A server also bounds what one video may cost (:class:`Limits`): pixels per frame, checked
before anything is decoded, and wall time, checked before every decode, flow field and network
pass. A step is not interrupted once started, so a video stops at the first check past its
limit; the frame-size limit bounds what one step can cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from mml.config import ClipConfig
from mml.data import sampling, transforms
from mml.data.dataset import clip_positions, stack_fields, to_input
from mml.data.flow import compute_flow, quantize_flow, quantized_diff
from mml.data.video import VideoSource, probe, read_frames


class LimitExceeded(ValueError):
    """A video over a server's limits (time, frame size): its row gets this as its error."""


@dataclass(frozen=True)
class Limits:
    """What one video may cost: `seconds` of wall time from `start`, `max_pixels` per frame
    (None: no limit). Make one per video, when its work starts."""

    seconds: float | None = None
    max_pixels: int | None = None
    start: float = field(default_factory=time.monotonic)

    def check_time(self) -> None:
        if self.seconds is not None and time.monotonic() - self.start > self.seconds:
            raise LimitExceeded(f"time limit exceeded ({self.seconds:g} s per video)")

    def check_frame(self, height: int, width: int) -> None:
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise LimitExceeded(
                f"frames of {width}x{height} are over the limit of {self.max_pixels} pixels"
            )


NO_LIMITS = Limits()


def resize_short_side(frames: np.ndarray, short_side: int | None) -> np.ndarray:
    """(N, H, W, 3) uint8 with min(H, W) == short_side (aspect kept); None: unchanged."""
    height, width = frames.shape[1:3]
    if short_side is None or min(height, width) == short_side or not len(frames):
        return frames
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2: (w, h)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, size, interpolation=interpolation) for f in frames])


def view_inputs(
    path: VideoSource,
    modality: str,
    clip: ClipConfig,
    views: sampling.ViewPlan,
    *,
    short_side: int | None,
    flow_algorithm: str = "tvl1",
    flow_bound: float = 20.0,
    limits: Limits = NO_LIMITS,
) -> torch.Tensor:
    """The test views of one video for one modality: (V, T, C, crop, crop) float32.

    Raises mml.data.video.VideoDecodeError when the file cannot be decoded, LimitExceeded
    when it is over `limits`.
    """
    info = probe(path)
    limits.check_frame(info.height, info.width)
    count = info.num_frames
    plan = clip_positions(count, clip, None, views)  # (V, T), as in evaluation
    limits.check_time()
    if modality == "rgb":
        indices = sampling.frame_indices(plan, "rgb", count).reshape(-1)
        frames = resize_short_side(read_frames(path, indices), short_side)
        raw = frames.reshape(*plan.shape, *frames.shape[1:])
    else:
        raw = _motion_stacks(
            path, modality, plan, count, short_side, flow_algorithm, flow_bound, limits
        )
    h, w = raw.shape[-3:-1]
    crop = transforms.center_crop(h, w, scale_size=clip.scale_size, crop_size=clip.crop_size)
    return to_input(modality, transforms.apply_crop(raw, crop, clip.crop_size), False)


def _motion_stacks(
    path, modality, plan, count, short_side, algorithm, bound, limits: Limits
) -> np.ndarray:
    """uint8 (V, T, H, W, 5 c) flow or difference stacks, computing only the needed fields."""
    num_fields = max(count - 1, 1)  # field f lies between frames f and f + 1
    steps = plan[..., None] + np.arange(sampling.STACK[modality])
    needed = np.unique(np.minimum(steps, num_fields - 1))
    frame_ids = np.unique(np.concatenate([needed, np.minimum(needed + 1, count - 1)]))
    decoded = resize_short_side(read_frames(path, frame_ids), short_side)
    frame_at = {int(f): decoded[i] for i, f in enumerate(frame_ids)}
    fields = {}
    for f in needed.tolist():
        limits.check_time()
        pair = np.stack([frame_at[f], frame_at[min(f + 1, count - 1)]])
        if modality == "flow":
            fields[f] = quantize_flow(compute_flow(pair, algorithm), bound)[0]
        else:
            fields[f] = quantized_diff(pair[0], pair[1])
    return stack_fields(
        lambda idx: np.stack([fields[int(i)] for i in idx]), num_fields, plan, modality
    )
