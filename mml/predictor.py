"""Class probabilities for video files from a model package: one model or an ensemble.

A *model package* is a directory that `mml promote` builds and registers in MLflow (its files
are named by mml.artifacts): mml-model.json holds the kind, classes, test views, view fusion,
input short side, flow settings and the members (ref, modality, checkpoint file); <ref>.pt is
each member's checkpoint (weights + plain metadata; weights_only loads).

`VideoPredictor` runs every member on its own modality of the video (computing flow and
differences itself, see mml.data.live) and averages the members' class probabilities, as
`mml ensemble` does with the saved validation probabilities.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mml import artifacts, checkpoint
from mml.config import ClipConfig
from mml.data.live import view_inputs
from mml.data.sampling import ViewPlan
from mml.data.video import VideoDecodeError
from mml.errors import UserError
from mml.inference import fuse_views
from mml.models.factory import model_from_checkpoint

FORMAT = 1


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
) -> dict[str, Any]:
    """Copy the members' checkpoints (`(ref, path)`) into `root` and describe them."""

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries, classes = [], None
    for ref, path in members:
        meta = checkpoint.load(path)["meta"]
        if classes is not None and meta["classes"] != classes:
            raise UserError(f"{ref} was trained on other classes than {entries[0]['ref']}")
        classes = meta["classes"]
        file = artifacts.package_member(ref)
        shutil.copyfile(path, root / file)
        entries.append({"ref": ref, "modality": meta["modality"], "file": file})
    config = {
        "format": FORMAT,
        "kind": kind,
        "classes": classes,
        "multilabel": bool(meta.get("multilabel")),
        "views": {"dense": views.dense, "uniform": views.uniform},
        "fuse": fuse,
        "short_side": short_side,
        "flow": {"algorithm": flow_algorithm, "bound": flow_bound},
        "members": entries,
    }
    artifacts.write_json(artifacts.package_config(root), config)
    return config


class VideoPredictor:
    """Loads a model package; `predict(path)` gives the class probabilities of one video."""

    def __init__(self, root: Path) -> None:

        root = Path(root)
        try:
            config = json.loads(artifacts.package_config(root).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{root}: not an mml model package ({err})") from None
        if config.get("format") != FORMAT:
            raise UserError(f"{root}: model package format {config.get('format')}, need {FORMAT}")
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.multilabel = bool(config["multilabel"])
        self.views = ViewPlan(**config["views"])
        self.fuse = config["fuse"]
        self.members = []
        for entry in config["members"]:
            model, meta = model_from_checkpoint(root / artifacts.package_member(entry["ref"]))
            self.members.append(
                PackageMember(entry["ref"], meta["modality"], model, ClipConfig(**meta["clip"]))
            )

    @torch.inference_mode()
    def predict(self, video: str | Path) -> np.ndarray:
        """(classes,) probabilities; raises VideoDecodeError for a file that cannot be read."""

        inputs: dict[tuple[str, str], torch.Tensor] = {}
        probabilities = []
        for m in self.members:
            key = (m.modality, m.clip.model_dump_json())
            if key not in inputs:  # members with the same modality and clip share inputs
                inputs[key] = view_inputs(
                    video,
                    m.modality,
                    m.clip,
                    self.views,
                    short_side=self.config["short_side"],
                    flow_algorithm=self.config["flow"]["algorithm"],
                    flow_bound=self.config["flow"]["bound"],
                )
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
