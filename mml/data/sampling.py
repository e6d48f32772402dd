"""Temporal sampling plans: which frame positions a clip of T input frames takes.

Positions are 0-based indices into the `num_positions` valid starts of a modality (for RGB
every frame; for a stack of L frames, `num_frames - L + 1`). Pure functions of their
arguments and a `numpy.random.Generator`, so they are easy to check by hand.

Short videos (fewer positions than the plan needs) never wrap around (the authors' TSM code
wrapped modulo n, breaking temporal order): uniform plans repeat positions in order, dense
plans clamp to the last position, i.e. the last frame repeats.
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

    Starts range over 0..num_positions - span, span = (segments - 1) * stride + 1, every
    start included (train: uniform over them; test: the centre one unless `start` is
    given). A video shorter than the span starts at 0 and repeats its last position.
    """
    _check(num_positions, segments)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
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


def dense_test_starts(num_positions: int, segments: int, stride: int, views: int) -> list[int]:
    """Evenly spaced dense starts for `views` test clips (one view: the centre start)."""
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


# ---- several modalities of one clip (MML §2.3) ----------------------------------------------
STACK = {"rgb": 1, "flow": 5, "diff": 5}  # consecutive frame-steps one input frame stacks


def num_positions(num_frames: int, modality: str) -> int:
    """Valid start positions of `modality` in a video of `num_frames` RGB frames.

    rgb: every frame. flow/diff: there are F - 1 fields (or differences) and an input frame
    stacks 5 of them, so F - 5 starts; a video shorter than that still gets 1 position (its
    stack repeats the last field).
    """
    if modality == "rgb":
        return max(1, num_frames)
    return max(1, num_frames - 1 - STACK[modality] + 1)


def align_modalities(
    base: np.ndarray, counts: dict[str, int], rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Positions for every modality from `base`, drawn over the fewest positions n (MML §2.3).

    A modality with N > n positions gets `base + delta`, one delta ~ U{0..N-n} per clip
    (drawn per modality, as the authors do); with no `rng` (testing), delta = (N - n) // 2.
    All modalities thus see the same moments of the video, up to delta frames.
    """
    n = min(counts.values())
    if base.size and (base.min() < 0 or base.max() >= n):
        raise ValueError(f"base positions must lie in 0..{n - 1}, got {base.tolist()}")
    out = {}
    for modality, count in counts.items():
        spare = count - n
        delta = int(rng.integers(0, spare + 1)) if rng is not None else spare // 2
        out[modality] = base + delta
    return out
