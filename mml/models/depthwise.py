"""A depthwise convolution whose weight gradient is fast on tiny CPU feature maps.

On the CPU, aten's weight gradient of a depthwise convolution (groups = channels) is slow when
the input is 1×1 or 2×2, as in MobileNetV2's last blocks at small crops: for a (64, 480, 1, 1)
input it takes 6.8 ms where the same gradient written as one grouped convolution of the input
by the output gradient takes 2.5 ms (`benchmarks/step_profile.py`). At 4×4 and larger aten is
the faster one, so `DepthwiseConv2d` takes the grouped form only on CPU inputs of at most
`SMALL_INPUT` pixels, outside autocast; everywhere else it is `nn.Conv2d`. The forward pass and
the input gradient are aten's own; the weight gradient equals aten's up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

SMALL_INPUT = 4  # input H·W at or below which the grouped weight gradient is faster


class _SmallDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, [1, 1], False, [0, 0], x.shape[1],
                [True, False, False],
            )[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            grad_w = grouped_weight_grad(x, grad, weight.shape[-2:], stride, padding)
        return grad_x, grad_w, None, None


def grouped_weight_grad(x, grad, kernel_size, stride, padding) -> torch.Tensor:
    """The weight gradient of a depthwise conv, (C, 1, kh, kw), as one grouped convolution:
    dW[c] = sum over the batch of x[:, c] correlated with grad[:, c]. Batch and channels swap
    places and the forward stride becomes the dilation."""
    n, c, h, w = x.shape
    kh, kw = kernel_size
    return F.conv2d(
        x.transpose(0, 1).reshape(1, c * n, h, w),
        grad.transpose(0, 1),
        padding=padding,
        dilation=stride,
        groups=c,
    )[0, :, :kh, :kw].unsqueeze(1)


class DepthwiseConv2d(nn.Conv2d):
    """`nn.Conv2d` with groups = in = out channels, no bias, zero padding, dilation 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dim() == 4
            and x.shape[-2] * x.shape[-1] <= SMALL_INPUT
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        ):
            return _SmallDepthwise.apply(x, self.weight, list(self.stride), list(self.padding))
        return super().forward(x)


def is_plain_depthwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
        and m.bias is None
        and m.dilation == (1, 1)
        and m.padding_mode == "zeros"
        and isinstance(m.padding, tuple)
    )


def use_fast_depthwise(model: nn.Module) -> int:
    """Replace every plain depthwise `nn.Conv2d` of `model` by `DepthwiseConv2d`, in place,
    keeping its parameter (same tensor, same state_dict key). Returns how many were replaced."""
    targets = [(name, m) for name, m in model.named_modules() if is_plain_depthwise(m)]
    for name, old in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = DepthwiseConv2d(
            old.in_channels,
            old.out_channels,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            groups=old.groups,
            bias=False,
            device="meta",
        )
        new.weight = old.weight
        new.train(old.training)
        setattr(parent, attr, new)
    return len(targets)
