"""Video models: temporal shift, TSM and I3D backbones, first-conv adaptation, the factory."""

from mml.models.backbones import (
    TSM,
    VideoClassifier,
    tsm_mobilenet_v2,
    tsm_resnet18,
    tsm_resnet50,
    tsm_resnet101,
)
from mml.models.factory import MODALITY_CHANNELS, build_model
from mml.models.i3d import I3D, i3d_resnet18, i3d_resnet50
from mml.models.stem import adapt_first_conv
from mml.models.temporal_shift import temporal_shift

__all__ = [
    "I3D",
    "MODALITY_CHANNELS",
    "TSM",
    "VideoClassifier",
    "adapt_first_conv",
    "build_model",
    "i3d_resnet18",
    "i3d_resnet50",
    "temporal_shift",
    "tsm_mobilenet_v2",
    "tsm_resnet18",
    "tsm_resnet50",
    "tsm_resnet101",
]
