"""torch Dataset of video clips: (modality tensors, target) per video, plus the DataLoaders.

Randomness (temporal sampling, crop, flip) comes from a Generator seeded by
(seed, epoch, video index), so a sample is the same whatever the worker count or the order,
and a resumed run sees the very clips an uninterrupted one would. A video that cannot be
decoded is logged with its path and dropped from its batch by `collate`, which counts it;
an epoch never stops on one bad file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mml import seeds
from mml.config import ClipConfig, DatasetConfig, LoaderConfig
from mml.data import sampling, transforms
from mml.data.annotations import Annotations, VideoRecord, read_charades, read_csv, read_ssv2
from mml.data.cache import cache_path, file_format, open_cached
from mml.data.sharding import ShardedBatches, shard_indices
from mml.data.video import VideoDecodeError, keep_decoded, num_frames, probe_all, read_frames
from mml.progress import progress_bar

log = logging.getLogger(__name__)

RGB_MEAN_STD = (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
FLOW_MEAN_STD = ((0.5,), (0.226,))  # the authors' constants, on [0, 1]
CACHED = ("flow", "diff")  # modalities read from per-video caches (mml/data/cache.py)
# A dataset whose decoded frames fit in this many bytes (with what this process holds already)
# is decoded once per process and read from memory (video.keep_decoded): the synthetic
# default's 288 training videos are about 25 MB, Something-Something v2's are terabytes.
KEEP_DECODED_BYTES = 1 << 30


def cache_dir(root: Path, dataset: str, kind: str) -> Path:
    """Where the `kind` cache of a dataset lives: <cache.root>/<dataset>/<kind>."""
    return Path(root) / dataset / kind


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
        caches: dict[str, Path] | None = None,
    ) -> None:
        missing = [m for m in modalities if m in CACHED and m not in (caches or {})]
        if missing:
            raise ValueError(f"modalities {missing} need their cache directories")
        self.caches = {m: Path(p) for m, p in (caches or {}).items()}
        self.records = annotations.records
        self.num_classes = len(annotations.classes)
        self.multilabel = annotations.multilabel
        self.clip = clip
        self.train = train
        self.seed = seed
        self.views = views or sampling.ViewPlan(dense=0, uniform=1)
        self.modalities = tuple(modalities)
        self.epoch = 0
        self._probed = False
        self._kept: bool | None = None  # keep_decoded's decision
        self._formats: dict[str, str] = {}  # cache file format per modality (its settings.json)

    def probe_videos(self, workers: int = 0) -> None:
        """Read every video's frame count once, into this process's memo (`video.probe_all`,
        in `workers` processes), so that the loader workers forked from this process each
        epoch find it there instead of demuxing every video again; a broken video is left to
        its worker to report and skip."""
        if not self._probed:
            probe_all([record.path for record in self.records], workers)
            self._probed = True

    def keep_decoded(self, budget: int = KEEP_DECODED_BYTES) -> bool:
        """Decode this dataset's videos once into this process's memo if they fit in `budget`
        (`video.keep_decoded`); the loader workers forked from it each epoch decode nothing.
        Only when a modality is read from the videos: RGB, or differences without a cache."""
        if self._kept is None:  # decided once: the videos and the budget do not change
            reads_video = any(self._reads_video(m) for m in self.modalities)
            paths = [record.path for record in self.records]
            self._kept = reads_video and keep_decoded(paths, budget)
        return self._kept

    def _reads_video(self, modality: str) -> bool:
        if modality == "rgb":
            return True
        try:
            return self._format(modality) == "video"
        except CacheError:  # reported per video when read
            return False

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of `epoch` (call before iterating a new epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = seeds.clip(self.seed, self.epoch, index)
        try:
            clips = self._clips(record, rng)
        except (VideoDecodeError, CacheError) as err:
            log.warning("skipping video %s: %s", record.id, err)
            return {"id": record.id, "broken": str(err)}
        return {"id": record.id, **clips, "target": self._target(record)}

    def _clips(self, record: VideoRecord, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Every modality of one clip: the same positions (MML §2.3) and the same crop."""
        c = self.clip
        frames = num_frames(record.path)
        plan = clip_positions(frames, c, rng if self.train else None, self.views)
        raw = {m: self._read(record, m, plan, frames) for m in self.modalities}
        sizes = {m: x.shape[-3:-1] for m, x in raw.items()}
        if len(set(sizes.values())) > 1:
            raise CacheError(f"video {record.id}: modality sizes differ {sizes}; rebuild caches")
        h, w = sizes[self.modalities[0]]
        crop = self._crop(h, w, rng)
        return {
            m: to_input(m, transforms.apply_crop(x, crop, c.crop_size), crop.flip)
            for m, x in raw.items()
        }

    def _read(self, record: VideoRecord, modality: str, plan: np.ndarray, count: int) -> np.ndarray:
        """uint8 (*plan.shape, H, W, C): RGB frames, or stacks of 5 cached fields/differences."""
        if modality == "rgb":
            indices = sampling.frame_indices(plan, "rgb", count)
            frames = read_frames(record.path, indices.reshape(-1))
            return frames.reshape(*plan.shape, *frames.shape[1:])
        cache = self.caches[modality]
        fmt = self._format(modality)
        path = cache_path(cache, record.id, fmt)
        try:
            fields = open_cached(cache, record.id, fmt, record.path)  # (F-1, H, W, 2|3) uint8
            return stack_fields(lambda i: np.asarray(fields[i]), len(fields), plan, modality)
        except (OSError, ValueError) as err:  # missing, truncated, or not decoding (CacheFileError)
            hint = f"run `mml data {modality}`"
            raise CacheError(f"{modality} cache {path}: {err} ({hint})") from None

    def _format(self, modality: str) -> str:
        """The file format of `modality`'s cache (its settings.json), read once."""
        if modality not in self._formats:
            cache = self.caches[modality]
            try:
                self._formats[modality] = file_format(cache)
            except ValueError as err:
                raise CacheError(f"{modality} cache {cache}: {err}") from None
        return self._formats[modality]

    def _crop(self, h: int, w: int, rng: np.random.Generator) -> transforms.Crop:
        c = self.clip
        if self.train:
            crop = transforms.multiscale_crop(
                h,
                w,
                scale_size=c.scale_size,
                crop_size=c.crop_size,
                scales=c.scales,
                max_distort=c.max_distort,
                flip=c.flip,
                rng=rng,
            )
            return crop
        return transforms.center_crop(h, w, scale_size=c.scale_size, crop_size=c.crop_size)

    def _target(self, record: VideoRecord) -> torch.Tensor:
        if self.multilabel:
            target = torch.zeros(self.num_classes)
            target[list(record.labels)] = 1.0
            return target
        if len(record.labels) != 1:
            raise ValueError(f"video {record.id}: single-label data needs one label")
        return torch.tensor(record.labels[0])


def clip_positions(
    num_frames: int,
    clip: ClipConfig,
    rng: np.random.Generator | None,
    views: sampling.ViewPlan,
) -> np.ndarray:
    """The positions one clip takes, for every modality alike: a training plan (with `rng`,
    `clip.sampling`), else the test views of `views`, (V, T)."""
    n = sampling.num_positions(num_frames)
    if rng is not None:
        return sampling.train_indices(
            n, clip.segments, clip.stride, sampling=clip.sampling, mix=clip.mix, rng=rng
        )
    return sampling.view_indices(n, clip.segments, clip.stride, views)


def stack_fields(
    fields_at: Callable[[np.ndarray], np.ndarray], num_fields: int, plan: np.ndarray, modality: str
) -> np.ndarray:
    """uint8 (*plan.shape, H, W, 5 c): at each position the 5 consecutive flow fields (or
    differences) it stacks, channels x1, y1, x2, y2, ... A stack that runs past the last field
    repeats it. `fields_at(indices)` returns those fields, (len, H, W, c)."""
    steps = plan[..., None] + np.arange(sampling.STACK[modality])  # (..., 5)
    stacks = fields_at(np.minimum(steps, num_fields - 1).reshape(-1))
    stacks = stacks.reshape(*steps.shape, *stacks.shape[1:])  # (..., 5, H, W, c)
    stacks = np.moveaxis(stacks, -4, -2)  # (..., H, W, 5, c)
    return stacks.reshape(*stacks.shape[:-2], -1)


class CacheError(RuntimeError):
    """A flow/diff cache file is missing or unreadable (the video is skipped like a broken one)."""


def to_input(modality: str, x: torch.Tensor, flipped: bool) -> torch.Tensor:
    """[0, 1] crops -> network input: RGB ImageNet-normalised, flow (v - .5) / .226 with x
    negated under a horizontal flip, diff back to next - previous in [-1, 1] (not normalised)."""
    if modality == "rgb":
        return transforms.normalize(x, *RGB_MEAN_STD)
    if modality == "flow":
        if flipped:
            x[..., 0::2, :, :] = 1.0 - x[..., 0::2, :, :]  # quantised -v is 255 - q
        return transforms.normalize(x, *FLOW_MEAN_STD)
    return 2.0 * x - 1.0  # q = (d + 255) // 2, so d / 255 = 2 q / 255 - 1


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


def stage_caches(params, modalities: Sequence[str]) -> dict[str, Path]:
    """The cache directories a set of modalities needs under `params.cache`."""
    return {
        m: cache_dir(params.cache.root, params.dataset.name, m) for m in modalities if m in CACHED
    }


def make_loader(
    dataset: VideoClips,
    loader: LoaderConfig,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader over `dataset` for `epoch`, shuffled by (seed, epoch) when asked.

    With `world_size` > 1 it yields process `rank`'s share: its slice of every shuffled
    global batch (`mml.data.sharding.ShardedBatches`), or its contiguous part of the unshuffled
    dataset.
    """
    dataset.set_epoch(epoch)
    if loader.workers:
        dataset.probe_videos(loader.workers)
    dataset.keep_decoded()
    batch_size = batch_size or loader.batch_size
    common = dict(
        num_workers=loader.workers,
        collate_fn=collate,
        generator=seeds.epoch_order(seed, epoch),
        persistent_workers=False,
        multiprocessing_context="fork" if loader.workers else None,
    )
    if world_size > 1 and shuffle:
        sharded = ShardedBatches(
            len(dataset), batch_size, seed=seed, epoch=epoch, rank=rank, size=world_size
        )
        return DataLoader(dataset, batch_sampler=sharded, **common)
    if world_size > 1:
        part = shard_indices(len(dataset), rank, world_size)
        return DataLoader(dataset, batch_size=batch_size, sampler=part, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False, **common)


class KeptBatches:
    """The batches of a loader whose clips never change (validation: fixed positions, centre
    crop), decoded on the first complete pass and replayed from memory on every later one, as
    long as they fit in `budget` bytes; past that, every pass decodes again.

    A training stage validates the same clips every few epochs: at the default's size they are
    about 10 MB per modality and decoding them is most of a validation's time. At
    Something-Something v2's they are over 100 GB and are decoded each time, as before.
    """

    def __init__(self, make: Callable[[], DataLoader], budget: int) -> None:
        self._make = make
        self.budget = budget
        self._kept: list[Batch] | None = None
        self._length: int | None = None

    def __len__(self) -> int:
        if self._length is None:
            self._length = len(self._make())
        return self._length

    def __iter__(self):
        if self._kept is not None:
            yield from self._kept
            return
        loader = self._make()
        self._length = len(loader)
        kept: list[Batch] | None = []
        size = 0
        for batch in loader:
            if kept is not None:
                size += sum(x.nbytes for x in batch.inputs.values()) + batch.targets.nbytes
                if size <= self.budget:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._kept = kept  # only a pass that reached the end is kept


def check_videos(annotations: Annotations, *, show_progress: bool = True) -> list[tuple[str, str]]:
    """(id, reason) of every video whose frames cannot be counted and decoded."""

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
