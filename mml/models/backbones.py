"""TSM video classifiers on torchvision ResNet-18/50/101 and MobileNetV2.

A clip (B, T, C, H, W) is run frame by frame through a 2D backbone whose residual branches
temporally shift their input (TSM); the prediction is the mean over T of per-frame logits.
Builders are plain functions in torchvision's style; `weights` is a torchvision weight enum
member (ImageNet) or None (random init).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from mml.models.depthwise import use_fast_depthwise
from mml.models.stem import set_in_channels
from mml.models.temporal_shift import TemporalShift


class VideoClassifier(nn.Module):
    """Trunk (-> feature maps) + global pooling + dropout + linear head, with TSN's partial BN.

    Subclasses define `forward_with_features(x)`: (B, T, C, H, W) -> (logits, feature maps
    before global pooling); `forward` returns the logits.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        dropout: float = 0.5,
        partial_bn: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.001)  # TSN/TSM head init
        nn.init.zeros_(self.fc.bias)
        self.partial_bn = partial_bn
        if partial_bn:
            for bn in self._frozen_bns():
                bn.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, num_classes) logits."""
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> VideoClassifier:
        """Partial BN (TSN): every BatchNorm but the first keeps its ImageNet statistics."""
        super().train(mode)
        if mode and self.partial_bn:
            for bn in self._frozen_bns():
                bn.eval()
        return self

    def _frozen_bns(self) -> list[nn.Module]:
        bns = [m for m in self.backbone.modules() if isinstance(m, _BatchNorm)]  # Sync too
        return bns[1:]


class TSM(VideoClassifier):
    """A 2D trunk run frame by frame with temporal shifts; logits averaged over the T frames."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, **kwargs) -> None:
        super().__init__(backbone, feature_dim, num_classes, **kwargs)
        self._shifts = [m for m in self.modules() if isinstance(m, TemporalShift)]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the feature maps before global pooling, (B*T, C', h, w) (for MARS)."""
        b, t = x.shape[:2]
        for shift in self._shifts:
            shift.segments = t
        fmap = self.backbone(x.flatten(0, 1))
        logits = self.fc(self.dropout(fmap.mean(dim=(2, 3))))
        return logits.view(b, t, -1).mean(dim=1), fmap


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and head: frames -> feature maps.

    Keeps torchvision's module names (conv1, bn1, layer1..layer4) in the state dict.
    """

    def __init__(self, net: torchvision.models.ResNet) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class MobileNetTrunk(nn.Module):
    """torchvision MobileNetV2's `features` (names kept as `features.N`): frames -> feature maps."""

    def __init__(self, net: torchvision.models.MobileNetV2) -> None:
        super().__init__()
        self.features = net.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _shift_resnet_blocks(net: torchvision.models.ResNet, fold_div: int, every: int) -> None:
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for i, block in enumerate(layer):
            if isinstance(block, BasicBlock | Bottleneck) and i % every == 0:
                block.conv1 = TemporalShift(block.conv1, fold_div)


def _tsm_resnet(
    depth: int,
    num_classes: int,
    in_channels: int,
    shift_div: int,
    weights: torchvision.models.WeightsEnum | None,
    dropout: float,
    partial_bn: bool,
) -> TSM:
    net = getattr(torchvision.models, f"resnet{depth}")(weights=weights)
    # TSM shifts every residual block; for ResNet-101 (23-block layer3) every other one.
    _shift_resnet_blocks(net, shift_div, every=2 if depth >= 101 else 1)
    trunk = ResNetTrunk(net)
    set_in_channels(trunk, in_channels)
    return TSM(trunk, net.fc.in_features, num_classes, dropout=dropout, partial_bn=partial_bn)


def tsm_resnet18(
    num_classes: int,
    in_channels: int = 3,
    shift_div: int = 8,
    weights=None,
    dropout: float = 0.5,
    partial_bn: bool = False,
) -> TSM:
    """TSM on ResNet-18 (weights: torchvision ResNet18_Weights member or None)."""
    return _tsm_resnet(18, num_classes, in_channels, shift_div, weights, dropout, partial_bn)


def tsm_resnet50(
    num_classes: int,
    in_channels: int = 3,
    shift_div: int = 8,
    weights=None,
    dropout: float = 0.5,
    partial_bn: bool = False,
) -> TSM:
    """TSM on ResNet-50 (weights: torchvision ResNet50_Weights member or None)."""
    return _tsm_resnet(50, num_classes, in_channels, shift_div, weights, dropout, partial_bn)


def tsm_resnet101(
    num_classes: int,
    in_channels: int = 3,
    shift_div: int = 8,
    weights=None,
    dropout: float = 0.5,
    partial_bn: bool = False,
) -> TSM:
    """TSM on ResNet-101 (weights: torchvision ResNet101_Weights member or None)."""
    return _tsm_resnet(101, num_classes, in_channels, shift_div, weights, dropout, partial_bn)


def tsm_mobilenet_v2(
    num_classes: int,
    in_channels: int = 3,
    shift_div: int = 8,
    weights=None,
    width_mult: float = 1.0,
    dropout: float = 0.5,
    partial_bn: bool = False,
) -> TSM:
    """TSM on MobileNetV2: shift before the first conv of each residual inverted block."""
    if weights is not None and width_mult != 1.0:
        raise ValueError(f"ImageNet weights exist only for width_mult=1.0, not {width_mult}")
    net = torchvision.models.mobilenet_v2(weights=weights, width_mult=width_mult)
    for block in net.features:
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            block.conv[0] = TemporalShift(block.conv[0], shift_div)
    use_fast_depthwise(net)  # its last blocks' maps are 1x1 and 2x2 at small crops
    trunk = MobileNetTrunk(net)
    set_in_channels(trunk, in_channels)
    return TSM(trunk, net.last_channel, num_classes, dropout=dropout, partial_bn=partial_bn)
