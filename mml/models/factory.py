"""Build a stage's model from config: architecture, modality channels and initialisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torchvision

from mml import artifacts, checkpoint
from mml.config import ModelConfig
from mml.models.backbones import (
    VideoClassifier,
    tsm_mobilenet_v2,
    tsm_resnet18,
    tsm_resnet50,
    tsm_resnet101,
)
from mml.models.i3d import i3d_resnet18, i3d_resnet50
from mml.models.stem import set_in_channels

MODALITY_CHANNELS = {"rgb": 3, "flow": 10, "diff": 15}  # per input frame (ARCHITECTURE §1)
BUILDERS = {  # arch -> (builder, torchvision model whose ImageNet weights it starts from)
    "tsm_resnet18": (tsm_resnet18, "resnet18"),
    "tsm_resnet50": (tsm_resnet50, "resnet50"),
    "tsm_resnet101": (tsm_resnet101, "resnet101"),
    "tsm_mobilenet_v2": (tsm_mobilenet_v2, "mobilenet_v2"),
    "i3d_resnet18": (i3d_resnet18, "resnet18"),
    "i3d_resnet50": (i3d_resnet50, "resnet50"),
}


def build_model(
    cfg: ModelConfig,
    num_classes: int,
    modality: str,
    init: str = "scratch",
    checkpoints: Path = Path("checkpoints"),
) -> VideoClassifier:
    """A model (TSM or I3D, per `cfg.arch`) for `modality`: `imagenet`, `scratch`, `<stage>.<k>`.

    `<stage>.<k>` loads checkpoints/<stage>/<k>.pt completely, head included; when that
    model saw another modality its first conv is adapted (MML §2.1). A pretraining checkpoint
    (`mml pretrain`, its meta names a `pretext`) gives everything but its head, which starts
    new, as with `imagenet`.
    """
    in_channels = MODALITY_CHANNELS[modality]
    if init in ("imagenet", "scratch"):
        weights = _imagenet_weights(cfg) if init == "imagenet" else None
        return _make(cfg, num_classes, in_channels, weights)
    path = artifacts.checkpoint_path(checkpoints, init)
    payload = checkpoint.load(path)
    meta = payload["meta"]
    if meta.get("pretext"):  # `mml pretrain`'s: everything but its pretext head, like imagenet
        return _from_pretext(cfg, num_classes, in_channels, path, payload)
    if meta["num_classes"] != num_classes:
        raise checkpoint.CheckpointError(
            f"{path} predicts {meta['num_classes']} classes but this dataset has {num_classes}; "
            "initialise from a model trained on the same dataset."
        )
    _check_arch(cfg, meta, path)
    model = _make(cfg, num_classes, meta["in_channels"], None)
    model.load_state_dict(payload["state_dict"])
    set_in_channels(model.backbone, in_channels)
    return model


def _check_arch(cfg: ModelConfig, meta: dict[str, Any], path: Path) -> None:
    source = ModelConfig(**meta["model"])
    if source.arch != cfg.arch:
        raise checkpoint.CheckpointError(
            f"{path} is a {source.arch} model, this stage builds {cfg.arch}."
        )


def _from_pretext(
    cfg: ModelConfig, num_classes: int, in_channels: int, path: Path, payload: dict[str, Any]
) -> VideoClassifier:
    meta = payload["meta"]
    _check_arch(cfg, meta, path)
    model = _make(cfg, num_classes, meta["in_channels"], None)
    trunk = {k: v for k, v in payload["state_dict"].items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(trunk, strict=False)
        fits = not unexpected and sorted(missing) == ["fc.bias", "fc.weight"]
        detail = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    except RuntimeError as err:  # a tensor of another shape (e.g. another width_mult)
        fits, detail = False, str(err).splitlines()[-1].strip()
    if not fits:
        raise checkpoint.CheckpointError(
            f"{path} does not fit this stage's {cfg.arch} ({detail}); run `mml pretrain` "
            "again with this model config."
        )
    set_in_channels(model.backbone, in_channels)
    return model


def model_meta(
    cfg: ModelConfig, model: VideoClassifier, modality: str, **extra: Any
) -> dict[str, Any]:
    """The plain-data description saved next to a model's weights."""
    return {
        "model": cfg.model_dump(mode="json"),
        "num_classes": model.fc.out_features,
        "in_channels": MODALITY_CHANNELS[modality],
        "modality": modality,
        **extra,
    }


def model_from_checkpoint(path: Path) -> tuple[VideoClassifier, dict[str, Any]]:
    """Rebuild a saved model (eval mode) and return it with its metadata."""
    payload = checkpoint.load(path)
    meta = payload["meta"]
    cfg = ModelConfig(**meta["model"])
    model = _make(cfg, meta["num_classes"], meta["in_channels"], None)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), meta


def _make(cfg: ModelConfig, num_classes: int, in_channels: int, weights) -> VideoClassifier:
    builder, _ = BUILDERS[cfg.arch]
    kwargs: dict[str, Any] = dict(
        num_classes=num_classes,
        in_channels=in_channels,
        shift_div=cfg.shift_div,
        weights=weights,
        dropout=cfg.dropout,
        partial_bn=cfg.partial_bn,
    )
    if cfg.arch == "tsm_mobilenet_v2":
        kwargs["width_mult"] = cfg.width_mult
    return builder(**kwargs)


def _imagenet_weights(cfg: ModelConfig) -> torchvision.models.WeightsEnum:
    """The torchvision weight enum member named by `model.weights` (e.g. DEFAULT, IMAGENET1K_V1)."""
    _, tv_name = BUILDERS[cfg.arch]
    enum = torchvision.models.get_model_weights(tv_name)
    try:
        return enum[cfg.weights]
    except KeyError:
        names = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(f"model.weights={cfg.weights!r} is not one of {names}") from None
