"""I3D video classifiers: torchvision ResNet-18/50 with 2D kernels inflated to 3D.

The I3D baseline of Wang et al., "Non-local Neural Networks" (§4): conv1 becomes 5x7x7, and
in every other residual block of each stage the first conv gets a temporal kernel of 3 (3x1x1
in a Bottleneck, 3x3x3 in a BasicBlock). Unlike the paper's setup, nothing strides or pools
over time: the trunk keeps all T input frames, so its feature map is (B, C', T, h, w).
A 2D kernel W becomes W / kt repeated kt times along time (Carreira & Zisserman, "Quo Vadis",
bootstrapping 3D filters from 2D ones), so a clip of one repeated frame gives the 2D
network's activations away from the temporal borders, which see zero padding.
Builders take the same keywords as the TSM builders in `mml.models.backbones`.
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from mml.models.backbones import ResNetTrunk, VideoClassifier
from mml.models.stem import set_in_channels


def inflate_conv(conv: nn.Conv2d, time_kernel: int = 1, time_padding: int = 0) -> nn.Conv3d:
    """A Conv3d, kernel (time_kernel, kh, kw), each time slice conv.weight / time_kernel.

    Spatial stride, padding, dilation and groups are kept; the temporal stride is 1.
    """
    # skip_init: every parameter is overwritten below, so don't pay for kaiming init.
    conv3d = nn.utils.skip_init(
        nn.Conv3d,
        conv.in_channels,
        conv.out_channels,
        (time_kernel, *conv.kernel_size),
        stride=(1, *conv.stride),
        padding=(time_padding, *conv.padding),
        dilation=(1, *conv.dilation),
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        weight = conv.weight.unsqueeze(2).expand_as(conv3d.weight)  # W repeated kt times
        torch.div(weight, time_kernel, out=conv3d.weight)
        if conv.bias is not None:
            conv3d.bias.copy_(conv.bias)
    return conv3d


def inflate_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    """The same BatchNorm (affine params, running stats, eps, momentum) for 5-D input."""
    bn3d = nn.BatchNorm3d(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    bn3d.load_state_dict(bn.state_dict())
    return bn3d


def _inflate_block(block: nn.Module, temporal: bool) -> None:
    """Inflate one torchvision residual block in place; its forward works on 5-D input as is."""
    if isinstance(block, Bottleneck):
        # Non-local NN §4: [3x1x1, 1x3x3, 1x1x1] in inflated blocks, else [1x1x1, 1x3x3, 1x1x1].
        block.conv1 = inflate_conv(block.conv1, 3, 1) if temporal else inflate_conv(block.conv1)
        block.conv2 = inflate_conv(block.conv2)
        block.conv3 = inflate_conv(block.conv3)
    elif isinstance(block, BasicBlock):
        block.conv1 = inflate_conv(block.conv1, 3, 1) if temporal else inflate_conv(block.conv1)
        block.conv2 = inflate_conv(block.conv2)
    else:
        raise TypeError(f"cannot inflate {type(block).__name__}: expected BasicBlock/Bottleneck")
    for name in ("bn1", "bn2", "bn3"):
        if hasattr(block, name):
            setattr(block, name, inflate_bn(getattr(block, name)))
    if block.downsample is not None:
        conv, bn = block.downsample
        block.downsample = nn.Sequential(inflate_conv(conv), inflate_bn(bn))


def inflate_resnet(net: torchvision.models.ResNet) -> ResNetTrunk:
    """The 3D trunk (conv1 .. layer4, no pooling or fc) of a 2D torchvision ResNet.

    (B, C, T, H, W) -> (B, C', T, H/32, W/32), torchvision's module names. `net` is left as is.
    """
    # Copy the structure, not the weights (memo: every tensor maps to itself), so the
    # caller's 2D net is untouched; all of the copy's convs and BNs are replaced below.
    memo = {id(t): t for t in (*net.parameters(), *net.buffers())}
    net = copy.deepcopy(net, memo)
    net.conv1 = inflate_conv(net.conv1, time_kernel=5, time_padding=2)
    net.bn1 = inflate_bn(net.bn1)
    net.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for i, block in enumerate(layer):
            _inflate_block(block, temporal=i % 2 == 0)
    return ResNetTrunk(net)  # conv1 is its first conv: stem.first_conv finds it that way


class I3D(VideoClassifier):
    """3D trunk + global average pool + dropout + linear head; takes (B, T, C, H, W) clips."""

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C, H, W) -> logits (B, num_classes) and the unpooled (B, C', T, h, w) map."""
        if x.dim() != 5:
            raise ValueError(f"expected a clip batch (B, T, C, H, W), got shape {tuple(x.shape)}")
        fmap = self.backbone(x.permute(0, 2, 1, 3, 4))
        logits = self.fc(self.dropout(fmap.mean(dim=(2, 3, 4))))
        return logits, fmap


def _i3d_resnet(
    depth: int,
    num_classes: int,
    in_channels: int,
    weights: torchvision.models.WeightsEnum | None,
    dropout: float,
    partial_bn: bool,
) -> I3D:
    net = getattr(torchvision.models, f"resnet{depth}")(weights=weights)
    trunk = inflate_resnet(net)
    set_in_channels(trunk, in_channels)
    return I3D(trunk, net.fc.in_features, num_classes, dropout=dropout, partial_bn=partial_bn)


def i3d_resnet18(
    num_classes: int,
    in_channels: int = 3,
    shift_div: int = 8,
    weights=None,
    dropout: float = 0.5,
    partial_bn: bool = False,
) -> I3D:
    """I3D on ResNet-18 (weights: ResNet18_Weights member or None; shift_div is unused)."""
    return _i3d_resnet(18, num_classes, in_channels, weights, dropout, partial_bn)


def i3d_resnet50(
    num_classes: int,
    in_channels: int = 3,
    shift_div: int = 8,
    weights=None,
    dropout: float = 0.5,
    partial_bn: bool = False,
) -> I3D:
    """I3D on ResNet-50 (weights: ResNet50_Weights member or None; shift_div is unused)."""
    return _i3d_resnet(50, num_classes, in_channels, weights, dropout, partial_bn)
