"""Temporal sampling plans: which frame positions a clip of T input frames takes.

Every modality shares one time base (`num_positions`): position p is the window of frames
p..p+5 that a stack of 5 flow fields (or differences) spans, and an RGB input frame is the
frame near its centre, p + 2 (`frame_indices`). So a model's clips do not depend on which peers
share its loader, training and test draw from the same positions, and the modalities of one
clip see the same moments (MML §2.3 with a zero offset, since all have the same count).

Positions are then planned by pure functions of their arguments and a
`numpy.random.Generator`, easy to check by hand. Short videos never wrap around (the authors'
TSM code wrapped modulo n, breaking temporal order): uniform plans repeat positions in order,
and dense plans shrink their stride to fit the video (`fit_stride`), repeating the last
position only when the video has fewer positions than the clip has frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def uniform_indices(
    num_positions: int,
    segments: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    shift: float = 0.0,
) -> np.ndarray:
    """TSN sampling: split [0, num_positions) into `segments` equal parts, one index per part.

    Train: a uniformly random position inside each part (`rng` required).
    Test: the part's centre moved by `shift` parts, wrapping inside the part; `shift=-0.5`
    gives the part starts, the authors' second ("twice") test view.
    """
    _check(num_positions, segments)
    seg = num_positions / segments
    k = np.arange(segments, dtype=np.float64)
    if train:
        if rng is None:
            raise ValueError("uniform_indices(train=True) needs an rng")
        offsets = rng.random(segments)
    else:
        offsets = np.full(segments, (0.5 + shift) % 1.0)
    idx = np.floor((k + offsets) * seg).astype(np.int64)
    return np.clip(idx, 0, num_positions - 1)


def dense_indices(
    num_positions: int,
    segments: int,
    stride: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    start: int | None = None,
) -> np.ndarray:
    """Dense sampling: `segments` positions `stride` apart from one start.

    `stride` is the largest stride: a video too short for its span uses `fit_stride`'s.
    Starts range over 0..num_positions - span, span = (segments - 1) * stride + 1, every
    start included (train: uniform over them; test: the centre one unless `start` is
    given). A video with fewer positions than `segments` starts at 0 and repeats its last one.
    """
    _check(num_positions, segments)
    stride = fit_stride(num_positions, segments, stride)
    max_start = max(0, num_positions - ((segments - 1) * stride + 1))
    if start is None:
        if train:
            if rng is None:
                raise ValueError("dense_indices(train=True) needs an rng")
            start = int(rng.integers(0, max_start + 1))
        else:
            start = max_start // 2
    elif not 0 <= start <= max_start:
        raise ValueError(f"start {start} outside 0..{max_start} for {num_positions} positions")
    idx = start + stride * np.arange(segments, dtype=np.int64)
    return np.minimum(idx, num_positions - 1)


def fit_stride(num_positions: int, segments: int, stride: int) -> int:
    """The dense stride for a video: `stride`, or the largest that fits its positions.

    With stride 32 // T and videos shorter than the span, dense clips would start at 0 and
    repeat the last frame (what a peer with fewer positions used to cause, issue 13); a fitted
    stride keeps every clip inside the video and in order.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if segments < 2:
        return stride
    return max(1, min(stride, (num_positions - 1) // (segments - 1)))


def dense_test_starts(num_positions: int, segments: int, stride: int, views: int) -> list[int]:
    """Evenly spaced dense starts for `views` test clips (one view: the centre start)."""
    stride = fit_stride(num_positions, segments, stride)
    max_start = max(0, num_positions - ((segments - 1) * stride + 1))
    if views == 1:
        return [max_start // 2]
    return [int(s) for s in np.linspace(0, max_start, views).round()]


@dataclass(frozen=True)
class ViewPlan:
    """How one video is tested: "Dense k + Uniform m" (paper App. 1, Tab. 10)."""

    dense: int = 1
    uniform: int = 2

    def __str__(self) -> str:
        return f"Dense {self.dense} + Uniform {self.uniform}"


def view_indices(num_positions: int, segments: int, stride: int, plan: ViewPlan) -> np.ndarray:
    """(dense + uniform, segments) positions: k evenly spaced dense clips, then m uniform ones
    (centres shifted by j/m of a segment; m = 2 gives the authors' centres + starts)."""
    views = [
        dense_indices(num_positions, segments, stride, train=False, start=s)
        for s in (
            dense_test_starts(num_positions, segments, stride, plan.dense) if plan.dense else []
        )
    ]
    views += [
        uniform_indices(num_positions, segments, train=False, shift=j / plan.uniform)
        for j in range(plan.uniform)
    ]
    return np.stack(views)


def train_indices(
    num_positions: int,
    segments: int,
    stride: int,
    *,
    sampling: str,
    mix: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One training clip: uniform, dense, or mixed (uniform with probability `mix`, MML §3.1.1)."""
    if sampling == "mixed":
        sampling = "uniform" if rng.random() < mix else "dense"
    if sampling == "uniform":
        return uniform_indices(num_positions, segments, train=True, rng=rng)
    if sampling == "dense":
        return dense_indices(num_positions, segments, stride, train=True, rng=rng)
    raise ValueError(f"unknown sampling {sampling!r} (uniform, dense or mixed)")


def _check(num_positions: int, segments: int) -> None:
    if num_positions < 1:
        raise ValueError(f"need at least one valid position, got {num_positions}")
    if segments < 1:
        raise ValueError(f"need at least one segment, got {segments}")


# ---- one time base for every modality (MML §2.3) --------------------------------------------
STACK = {"rgb": 1, "flow": 5, "diff": 5}  # consecutive frame-steps one input frame stacks
WINDOW = 6  # frames a position spans: 5 flow fields (or differences) join 6 frames
RGB_OFFSET = 2  # the RGB frame of position p: p + 2, near the centre of frames p..p+5


def num_positions(num_frames: int) -> int:
    """Valid positions in a video of `num_frames` RGB frames, the same for every modality.

    Position p spans frames p..p+5: the 5 flow fields (or differences) of a stack starting at
    field p, or RGB frame p + 2. A video shorter than a window still has 1 position (its
    stacks repeat the last field).
    """
    return max(1, num_frames - WINDOW + 1)


def frame_indices(positions: np.ndarray, modality: str, num_frames: int) -> np.ndarray:
    """What a modality reads at `positions`: RGB frame indices, or the first field of each
    flow / difference stack (`mml.data.dataset.stack_fields` adds the other 4)."""
    if modality == "rgb":
        return np.minimum(positions + RGB_OFFSET, num_frames - 1)
    if modality not in STACK:
        raise ValueError(f"unknown modality {modality!r} (rgb, flow or diff)")
    return positions
