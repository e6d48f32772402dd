"""Test videos: frames that carry their own index (robust to lossy coding), synthetic clips.

Only the tests use these; the package writes and reads videos (`mml.data.video`) and draws the
synthetic dataset (`mml.data.synth`) without them.
"""

from __future__ import annotations

import numpy as np

from mml.config import SynthConfig
from mml.data.synth import draw_video, plan_video

# The synthetic-data settings the synth tests were written for: 64 px, full-contrast textures
# (mml.config's defaults before issue 14 made them params.yaml's 32-px values). Their geometry
# checks (motion direction, object sizes, pixel positions) are stated for these.
SYNTH_64 = dict(
    seed=0,
    train_per_class=64,
    val_per_class=12,
    frames=(24, 40),
    height=64,
    width=64,
    num_classes=10,
    distractors=2,
    jitter=1.5,
    noise=6.0,
    object_scale=1.0,
    dark_share=0.0,
    texture=1.0,
)


def synth_config(**changes) -> SynthConfig:
    """A validated `SynthConfig`: SYNTH_64 with `changes`."""
    return SynthConfig(**{**SYNTH_64, **changes})


# Index pattern: a 4x4 grid of blocks, 12 bits of frame index and a 4-bit checksum.
_GRID = 4
_INDEX_BITS = 12


def index_pattern_frames(num: int, height: int, width: int) -> np.ndarray:
    """(num, H, W, 3) uint8 frames whose pixels encode their own index, robust to lossy coding.

    A 4x4 grid of black or white blocks: 12 bits of the index (so ``num`` <= 4096) and a
    4-bit checksum of them. Blocks need 4+ pixels a side.
    """
    if not 0 <= num <= 1 << _INDEX_BITS:
        raise ValueError(f"index patterns encode at most {1 << _INDEX_BITS} frames, got {num}")
    if height < 4 * _GRID or width < 4 * _GRID:
        raise ValueError(f"index patterns need frames of at least 16x16, got {height}x{width}")
    frames = np.zeros((num, height, width, 3), np.uint8)
    for index in range(num):
        word = _pattern_word(index)
        for bit in range(_GRID * _GRID):
            if (word >> bit) & 1:
                rows, cols = _block(bit, height, width)
                frames[index, rows, cols] = 255
    return frames


def decode_index_pattern(frame: np.ndarray) -> int:
    """The index drawn by :func:`index_pattern_frames` into ``frame`` ((H, W, 3) uint8).

    Each block is read from its central half (block edges blur under compression) and
    thresholded at mid-grey; a checksum mismatch raises ``ValueError``.
    """
    height, width = frame.shape[:2]
    word = 0
    for bit in range(_GRID * _GRID):
        rows, cols = _block(bit, height, width)
        dr, dc = (rows.stop - rows.start) // 4, (cols.stop - cols.start) // 4
        centre = frame[rows.start + dr : rows.stop - dr, cols.start + dc : cols.stop - dc]
        if centre.mean() > 127.5:
            word |= 1 << bit
    index = word & ((1 << _INDEX_BITS) - 1)
    if _pattern_word(index) != word:
        raise ValueError(f"frame does not hold a valid index pattern (read bits {word:016b})")
    return index


def _pattern_word(index: int) -> int:
    # XOR of the nibbles, flipped so that neither a black nor a white frame is valid.
    checksum = (index ^ (index >> 4) ^ (index >> 8) ^ 0xA) & 0xF
    return index | (checksum << _INDEX_BITS)


def _block(bit: int, height: int, width: int) -> tuple[slice, slice]:
    row, col = divmod(bit, _GRID)
    return (
        slice(row * height // _GRID, (row + 1) * height // _GRID),
        slice(col * width // _GRID, (col + 1) * width // _GRID),
    )


def render_video(
    class_id: int, rng: np.random.Generator, spec: SynthConfig
) -> tuple[np.ndarray, list[str]]:
    """One video of class `class_id`: frames (T, H, W, 3) uint8 RGB and the placeholders."""
    plan = plan_video(class_id, rng, spec)
    return draw_video(plan), plan.placeholders
