"""Class probabilities for video files from a model package: one model or an ensemble.

A *model package* is a directory that `mml promote` builds and registers in MLflow: its
mml-model.json (`mml.artifacts.PackageConfig`: kind, classes, test views, view fusion, input
short side, flow settings, members) and each member's checkpoint <ref>.pt (weights + plain
metadata; weights_only loads).

`VideoPredictor` runs every member on its own modality of the video (computing flow and
differences itself, see mml.data.live) and averages the members' class probabilities, as
`mml ensemble` does with the saved validation probabilities.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mml import artifacts, checkpoint
from mml.artifacts import PackageConfig
from mml.config import ClipConfig
from mml.data.live import NO_LIMITS, Limits, view_inputs
from mml.data.sampling import ViewPlan
from mml.data.video import VideoDecodeError, VideoSource
from mml.errors import UserError
from mml.inference import fuse_views
from mml.models.factory import model_from_checkpoint


@dataclass
class PackageMember:
    ref: str
    modality: str
    model: torch.nn.Module
    clip: ClipConfig


def write_package(
    root: Path,
    members: Sequence[tuple[str, Path]],
    *,
    kind: str,
    views: ViewPlan,
    fuse: str,
    short_side: int | None,
    flow_algorithm: str,
    flow_bound: float,
) -> PackageConfig:
    """Copy the members' checkpoints (`(ref, path)`) into `root` and describe them."""

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries, classes, meta = [], None, {}
    for ref, path in members:
        meta = checkpoint.load(path)["meta"]
        if classes is not None and meta["classes"] != classes:
            raise UserError(f"{ref} was trained on other classes than {entries[0][0]}")
        classes = meta["classes"]
        shutil.copyfile(path, root / artifacts.package_member(ref))
        entries.append((ref, meta["modality"]))
    config = PackageConfig(
        kind,
        tuple(classes),
        bool(meta.get("multilabel")),
        (views.dense, views.uniform),
        fuse,
        short_side,
        flow_algorithm,
        float(flow_bound),
        tuple(entries),
    )
    artifacts.write_package_config(root, config)
    return config


class VideoPredictor:
    """Loads a model package; `predict(path)` gives the class probabilities of one video."""

    def __init__(self, root: Path) -> None:

        root = Path(root)
        config = artifacts.read_package_config(root)
        self.config = config
        self.classes: list[str] = list(config.classes)
        self.multilabel = config.multilabel
        self.views = ViewPlan(*config.views)
        self.fuse = config.fuse
        self.members = []
        for ref, _ in config.members:
            model, meta = model_from_checkpoint(root / artifacts.package_member(ref))
            self.members.append(
                PackageMember(ref, meta["modality"], model, ClipConfig(**meta["clip"]))
            )

    @torch.inference_mode()
    def predict(self, video: VideoSource, limits: Limits = NO_LIMITS) -> np.ndarray:
        """(classes,) probabilities of a video file (its path or its bytes); raises
        VideoDecodeError for one that cannot be read, LimitExceeded past `limits` (checked
        before each member's inputs and network pass)."""

        inputs: dict[tuple[str, str], torch.Tensor] = {}
        probabilities = []
        for m in self.members:
            key = (m.modality, m.clip.model_dump_json())
            limits.check_time()
            if key not in inputs:  # members with the same modality and clip share inputs
                inputs[key] = view_inputs(
                    video,
                    m.modality,
                    m.clip,
                    self.views,
                    short_side=self.config.short_side,
                    flow_algorithm=self.config.flow_algorithm,
                    flow_bound=self.config.flow_bound,
                    limits=limits,
                )
                limits.check_time()
            probabilities.append(fuse_views(m.model, inputs[key][None], self.fuse, self.multilabel))
        return np.mean(probabilities, axis=0)[0]

    def top(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k most probable classes with their probabilities, best first."""
        order = np.argsort(-probabilities, kind="stable")[: max(1, k)]
        return [(self.classes[i], float(probabilities[i])) for i in order]


def time_predictions(
    predictor: VideoPredictor,
    videos: Sequence[Path],
    keep: dict[Path, np.ndarray] | None = None,
) -> dict[str, float]:
    """CPU milliseconds per video (decode, flow/diff, every member, every view), after one
    warm-up prediction; mean and median over the `videos` that decode ({} if none does).
    `keep`, if given, receives each video's class probabilities."""

    times, warmed_up = [], False
    for video in videos:
        try:
            if not warmed_up:
                predictor.predict(video)
                warmed_up = True
            start = time.perf_counter()
            probabilities = predictor.predict(video)
        except VideoDecodeError:  # a broken val video is no reason to fail a promotion
            continue
        times.append((time.perf_counter() - start) * 1000)
        if keep is not None:
            keep[video] = probabilities
    if not times:
        return {}
    return {"ms_per_video": float(np.mean(times)), "ms_per_video_median": float(np.median(times))}
