"""Temporal Shift Module (Lin et al., TSM): zero-cost temporal mixing for 2D CNNs."""

from __future__ import annotations

import torch
from torch import nn


def temporal_shift(x: torch.Tensor, segments: int, fold_div: int = 8) -> torch.Tensor:
    """Shift 1/fold_div of the channels one step back in time and 1/fold_div forward.

    x: (N*T, C, H, W) with T = `segments`. Channels [0, fold) take the value of the next
    frame (zero at the last frame), [fold, 2*fold) that of the previous frame (zero at the
    first); the rest are unchanged. fold = C // fold_div. TSM's convention.
    """
    nt, c, h, w = x.shape
    if nt % segments:
        raise ValueError(f"batch dimension {nt} is not a multiple of segments={segments}")
    x = x.view(nt // segments, segments, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class TemporalShift(nn.Module):
    """Wraps a layer (a residual branch's first conv) so its input is temporally shifted.

    `segments` is set by the owning model before every forward (it is the clip's T).
    """

    def __init__(self, layer: nn.Module, fold_div: int = 8) -> None:
        super().__init__()
        self.layer = layer
        self.fold_div = fold_div
        self.segments = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(temporal_shift(x, self.segments, self.fold_div))

    def extra_repr(self) -> str:
        return f"fold_div={self.fold_div}"
