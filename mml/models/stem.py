"""First-conv adaptation (MML §2.1): reuse 3-channel weights for any number of input channels."""

from __future__ import annotations

import torch
from torch import nn


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(C, 3, *k) -> (C, in_channels, *k): every new input channel is the mean of the old ones.

    W_new[:, i] = (W[:, 0] + W[:, 1] + W[:, 2]) / 3 for every i, no rescaling (the paper's
    pseudocode). Works for 2D and 3D kernels and for any source channel count.
    """
    if weight.dim() < 3:
        raise ValueError(f"expected a conv weight (C, C_in, *k), got shape {tuple(weight.shape)}")
    mean = weight.mean(dim=1, keepdim=True)
    return mean.expand(weight.shape[0], in_channels, *weight.shape[2:]).contiguous()


def first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The first Conv2d/Conv3d of a network, with its parent module and attribute name."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d | nn.Conv3d):
                return parent, name, child
    raise ValueError("network has no convolution")


def set_in_channels(module: nn.Module, in_channels: int) -> None:
    """Replace the first conv of `module` by one taking `in_channels`, weights adapted."""
    parent, name, conv = first_conv(module)
    if conv.in_channels == in_channels:
        return
    new = type(conv)(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_first_conv(conv.weight, in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, name, new)
