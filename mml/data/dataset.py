"""torch Dataset of video clips: (modality tensors, target) per video, plus the DataLoaders.

Randomness (temporal sampling, crop, flip) comes from a Generator seeded by
(seed, epoch, video index), so a sample is the same whatever the worker count or the order,
and a resumed run sees the very clips an uninterrupted one would. A video that cannot be
decoded is logged with its path and dropped from its batch by `collate`, which counts it;
an epoch never stops on one bad file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mml.config import ClipConfig, DatasetConfig, LoaderConfig
from mml.data import sampling, transforms
from mml.data.annotations import Annotations, VideoRecord, read_charades, read_csv, read_ssv2
from mml.data.video import VideoDecodeError, num_frames, read_frames

log = logging.getLogger(__name__)

RGB_MEAN_STD = (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)


def load_split(cfg: DatasetConfig, split: str) -> Annotations:
    """The `train` or `val` annotations of the configured dataset, in its own format."""
    root = Path(cfg.root)
    video_dir = root / cfg.video_dir
    split_file = root / (cfg.train if split == "train" else cfg.val)
    if cfg.format == "ssv2":
        return read_ssv2(root / cfg.labels, split_file, video_dir, ext=cfg.ext)
    if cfg.format == "charades":
        return read_charades(split_file, root / cfg.labels, video_dir, ext=cfg.ext)
    classes_file = root / cfg.labels
    classes = (
        classes_file.read_text(encoding="utf-8").splitlines() if classes_file.is_file() else None
    )
    return read_csv(split_file, video_dir, classes=classes)


@dataclass(frozen=True)
class Batch:
    """A collated batch: inputs per modality, targets, and ids of videos dropped as broken."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    ids: list[str]
    skipped: list[str]


class VideoClips(Dataset):
    """Clips of the videos in `annotations`.

    train=True: one randomly sampled clip per video, (T, C, crop, crop) per modality.
    train=False: the test views of `views` stacked, (V, T, C, crop, crop).
    """

    def __init__(
        self,
        annotations: Annotations,
        clip: ClipConfig,
        *,
        train: bool,
        seed: int = 0,
        views: sampling.ViewPlan | None = None,
        modalities: Sequence[str] = ("rgb",),
    ) -> None:
        if tuple(modalities) != ("rgb",):
            raise ValueError(f"modalities {list(modalities)}: only 'rgb' clips are built so far")
        self.records = annotations.records
        self.num_classes = len(annotations.classes)
        self.multilabel = annotations.multilabel
        self.clip = clip
        self.train = train
        self.seed = seed
        self.views = views or sampling.ViewPlan(dense=0, uniform=1)
        self.modalities = tuple(modalities)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of `epoch` (call before iterating a new epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            rgb = self._rgb(record, rng)
        except VideoDecodeError as err:
            log.warning("skipping video %s: %s", record.id, err)
            return {"id": record.id, "broken": str(err)}
        return {"id": record.id, "rgb": rgb, "target": self._target(record)}

    def _rgb(self, record: VideoRecord, rng: np.random.Generator) -> torch.Tensor:
        c = self.clip
        count = num_frames(record.path)
        if self.train:
            idx = sampling.train_indices(
                count, c.segments, c.stride, sampling=c.sampling, mix=c.mix, rng=rng
            )
        else:
            idx = sampling.view_indices(count, c.segments, c.stride, self.views)
        frames = read_frames(record.path, idx.reshape(-1))
        frames = frames.reshape(*idx.shape, *frames.shape[1:])
        h, w = frames.shape[-3:-1]
        if self.train:
            crop = transforms.multiscale_crop(
                h, w, scale_size=c.scale_size, crop_size=c.crop_size, scales=c.scales,
                max_distort=c.max_distort, flip=c.flip, rng=rng,
            )  # fmt: skip
        else:
            crop = transforms.center_crop(h, w, scale_size=c.scale_size, crop_size=c.crop_size)
        x = transforms.apply_crop(frames, crop, c.crop_size)
        return transforms.normalize(x, *RGB_MEAN_STD)

    def _target(self, record: VideoRecord) -> torch.Tensor:
        if self.multilabel:
            target = torch.zeros(self.num_classes)
            target[list(record.labels)] = 1.0
            return target
        if len(record.labels) != 1:
            raise ValueError(f"video {record.id}: single-label data needs one label")
        return torch.tensor(record.labels[0])


def collate(samples: list[dict]) -> Batch:
    """Stack the decodable samples; remember which videos were skipped."""
    good = [s for s in samples if "broken" not in s]
    skipped = [s["id"] for s in samples if "broken" in s]
    if not good:
        return Batch({}, torch.empty(0), [], skipped)
    keys = [k for k in good[0] if k not in ("id", "target")]
    inputs = {k: torch.stack([s[k] for s in good]) for k in keys}
    targets = torch.stack([s["target"] for s in good])
    return Batch(inputs, targets, [s["id"] for s in good], skipped)


def make_loader(
    dataset: VideoClips,
    loader: LoaderConfig,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    batch_size: int | None = None,
) -> DataLoader:
    """A DataLoader over `dataset` for `epoch`, shuffled by (seed, epoch) when asked."""
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size or loader.batch_size,
        shuffle=shuffle,
        num_workers=loader.workers,
        collate_fn=collate,
        generator=generator,
        drop_last=False,
        persistent_workers=False,
        multiprocessing_context="fork" if loader.workers else None,
    )


def check_videos(annotations: Annotations, *, show_progress: bool = True) -> list[tuple[str, str]]:
    """(id, reason) of every video whose frames cannot be counted and decoded."""
    from mml.progress import progress_bar

    broken = []
    with progress_bar("checking videos", len(annotations.records), show_progress) as advance:
        for record in annotations.records:
            try:
                count = num_frames(record.path)
                read_frames(record.path, [0, count - 1])
            except VideoDecodeError as err:
                broken.append((record.id, str(err)))
            advance()
    return broken
