"""Video models: temporal shift, TSM backbones, first-conv adaptation, the model factory."""

from mml.models.backbones import (
    TSM,
    tsm_mobilenet_v2,
    tsm_resnet18,
    tsm_resnet50,
    tsm_resnet101,
)
from mml.models.factory import MODALITY_CHANNELS, build_model
from mml.models.stem import adapt_first_conv
from mml.models.temporal_shift import temporal_shift

__all__ = [
    "MODALITY_CHANNELS",
    "TSM",
    "adapt_first_conv",
    "build_model",
    "temporal_shift",
    "tsm_mobilenet_v2",
    "tsm_resnet18",
    "tsm_resnet50",
    "tsm_resnet101",
]
