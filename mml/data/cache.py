"""Flow and RGB-difference caches: one uint8 file per video, built in parallel, incrementally.

Layout of a cache directory::

    settings.json      what the files hold (kind, flow algorithm and bound, file format, version)
    <video id>.npy     format npy: flow (F-1, H, W, 2) uint8 (mml.data.flow.quantize_flow),
                       diff (F-1, H, W, 3) uint8 (mml.data.flow.quantize_diff)
    (nothing else)     format video, differences only: each clip's differences are computed
                       from its video's decoded frames when it is read (TSN's RGBDiff does
                       the same), exactly as a stored cache would hold them
                       (:class:`VideoDiffFields`); no bytes, no build
    <video id>.npz     format jpeg: the same array as greyscale JPEG images, one per
                       component (flow x, y; diff R, G, B) and chunk of CHUNK fields stacked
                       top to bottom (each field padded to a multiple of 8 rows, so no JPEG
                       block spans two fields); members ``c<chunk>_<component>`` (encoded
                       bytes) and ``shape``. A chunk whose decoded values stray more than
                       ``max_error`` steps from the exact ones is stored at quality 100,
                       else as PNG (lossless): the bound holds for every value, by
                       construction.

Files are at the video's own resolution and written atomically (mml.fsio), so a killed build
leaves only complete cache files (and hidden temp files, removed by the next build); a re-run
builds what is missing. If ``settings.json`` differs from the requested settings (the format
included), every cache file in the directory is stale and is deleted first. One build per
directory at a time, except shards of one build.
Readers open files with :func:`open_cached` (npy memory-mapped, jpeg decoded chunk by chunk:
either way a clip reads only the fields it needs, and the format comes from settings.json).

Sharded builds (`Shard`, `mml data flow --shard K/N`): shard K of N builds the videos whose id
hashes to K (SHA-256 of the id, mod N): a deterministic, disjoint slice that does not move when
videos are added, so N jobs of a scheduler's array build one directory together with no merge
step, each writing only its own files. A shard never deletes: it refuses a directory whose
``settings.json`` differs (clear it, or rebuild it unsharded), and it removes only its own
videos' temp files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from mml.config import CacheConfig, ConfigError
from mml.data.annotations import VideoRecord
from mml.data.flow import ALGORITHMS, compute_flow, quantize_flow, quantized_diff
from mml.data.video import VideoDecodeError, num_frames, read_frames
from mml.fsio import atomic_write, atomic_write_text, remove_temp_files
from mml.progress import progress_bar
from mml.workers import run_parallel

CacheKind = Literal["flow", "diff"]
CacheFormat = Literal["npy", "jpeg", "video"]
SUFFIX = {"npy": ".npy", "jpeg": ".npz"}  # format video stores no file per video
FORMATS: tuple[str, ...] = ("npy", "jpeg", "video")
CHUNK = 8  # fields per JPEG image: a clip decodes only the chunks it touches
# the config's defaults (one set of defaults: params.yaml = mml.config = these)
DEFAULT_ALGORITHM: str = CacheConfig.model_fields["flow_algorithm"].default
DEFAULT_BOUND: float = CacheConfig.model_fields["flow_bound"].default
DEFAULT_QUALITY: int = CacheConfig.model_fields["jpeg_quality"].default
DEFAULT_MAX_ERROR: int = CacheConfig.model_fields["max_error"].default
# Bump when the bytes written for the same settings change; old caches are then rebuilt.
FORMAT_VERSION = 1
SETTINGS_FILE = "settings.json"


@dataclass
class CacheReport:
    """What one :func:`build_cache` call did."""

    built: int = 0
    skipped_existing: int = 0
    broken: list[tuple[str, str]] = field(default_factory=list)  # (video id, reason)
    invalidated: int = 0  # stale .npy files deleted because the settings changed
    seconds: float = 0.0


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count): the videos whose id hashes to `index`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N', as a scheduler's array index and size give it (SLURM, Kubernetes: from 0)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or not int(match[1]) < int(match[2]):
            raise ConfigError(
                f"--shard {text!r}: expected K/N with 0 <= K < N (shard K of N, counted from 0)"
            )
        return cls(int(match[1]), int(match[2]))

    def holds(self, video_id: str) -> bool:
        digest = hashlib.sha256(video_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def cache_path(cache_dir: Path, video_id: str, fmt: CacheFormat | None = None) -> Path:
    """The cache file of one video (`fmt`: the directory's own format, from settings.json;
    format video has none: the directory's settings.json stands for every video)."""
    fmt = fmt or file_format(cache_dir)
    return Path(cache_dir) / (f"{video_id}{SUFFIX[fmt]}" if fmt in SUFFIX else SETTINGS_FILE)


def file_format(cache_dir: Path) -> CacheFormat:
    """The file format of a cache directory: settings.json's ``format``, npy when absent."""
    try:
        settings = json.loads((Path(cache_dir) / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "npy"
    fmt = settings.get("format", "npy") if isinstance(settings, dict) else "npy"
    if fmt not in FORMATS:
        raise ValueError(f"{cache_dir}/{SETTINGS_FILE}: unknown cache format {fmt!r}")
    return fmt


def open_cached(
    cache_dir: Path, video_id: str, fmt: CacheFormat | None = None, video: Path | None = None
):
    """The cached fields of one video: ``len()`` of them, and ``fields[indices]`` as
    (len(indices), H, W, C) uint8. npy: memory-mapped; jpeg: :class:`JpegFields`; video:
    :class:`VideoDiffFields` of `video` (the video file itself)."""
    fmt = fmt or file_format(cache_dir)
    if fmt == "video":
        if video is None:
            raise ValueError(f"{cache_dir}: differences are read from the videos; pass `video`")
        return VideoDiffFields(video)
    path = cache_path(cache_dir, video_id, fmt)
    if fmt == "npy":
        return np.load(path, mmap_mode="r")
    return JpegFields(path)


class CacheFileError(ValueError):
    """A cache file that is not what its directory's settings say (truncated, corrupt)."""


class JpegFields:
    """The fields of one ``.npz`` JPEG cache file; chunks are decoded when first indexed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._npz = np.load(self.path, allow_pickle=False)  # reads the zip directory only
            shape = self._npz["shape"]
        except (zipfile.BadZipFile, KeyError, EOFError) as err:
            raise CacheFileError(f"{self.path}: not a jpeg cache file ({err})") from None
        if shape.shape != (4,):
            raise CacheFileError(f"{self.path}: not a jpeg cache file (shape {shape.tolist()})")
        self.shape = tuple(int(v) for v in shape)
        self._chunks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        count = self.shape[0]
        if indices.ndim != 1 or (
            indices.size and not (0 <= indices.min() <= indices.max() < count)
        ):
            raise IndexError(f"{self.path}: field indices out of range 0..{count - 1}")
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for i, index in enumerate(indices.tolist()):
            out[i] = self._chunk(index // CHUNK)[index % CHUNK]
        return out

    def _chunk(self, c: int) -> np.ndarray:
        """Chunk `c` as (fields, H, W, C) uint8."""
        if c not in self._chunks:
            count, height, width, channels = self.shape
            fields = min(CHUNK, count - c * CHUNK)
            padded = _padded(height)
            chunk = np.empty((fields, height, width, channels), np.uint8)
            for k in range(channels):
                try:
                    data = self._npz[f"c{c}_{k}"]
                except (zipfile.BadZipFile, KeyError, EOFError, ValueError) as err:
                    raise CacheFileError(f"{self.path}: chunk {c}: {err}") from None
                image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
                if image is None or image.shape != (fields * padded, width):
                    raise CacheFileError(f"{self.path}: chunk {c} component {k} does not decode")
                chunk[..., k] = image.reshape(fields, padded, width)[:, :height]
            self._chunks[c] = chunk
        return self._chunks[c]


class VideoDiffFields:
    """The differences of one video, computed from its decoded frames when indexed: field f is
    ``quantize_diff(frame[f + 1] - frame[f])``, byte for byte what a stored diff cache holds
    (both decode the same frames). Decodes only the frames the indexed fields need."""

    def __init__(self, video: Path) -> None:
        self.path = Path(video)
        frames = num_frames(self.path)  # VideoDecodeError: the video is broken
        if frames < 2:
            raise CacheFileError(f"{self.path}: has {frames} frame(s); differences need 2")
        self.count = frames - 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or (
            indices.size and not (0 <= indices.min() <= indices.max() < self.count)
        ):
            raise IndexError(f"{self.path}: field indices out of range 0..{self.count - 1}")
        fields = np.unique(indices)
        frame_ids = np.union1d(fields, fields + 1)
        frames = read_frames(self.path, frame_ids)
        previous = frames[np.searchsorted(frame_ids, fields)]
        following = frames[np.searchsorted(frame_ids, fields + 1)]
        return quantized_diff(previous, following)[np.searchsorted(fields, indices)]


def _padded(height: int) -> int:
    return -(-height // 8) * 8


def encode_jpeg_fields(array: np.ndarray, quality: int, max_error: int) -> dict[str, np.ndarray]:
    """(F, H, W, C) uint8 -> the members of a jpeg cache file (see the module doc). A chunk
    and component whose JPEG strays more than `max_error` from `array` is stored at quality
    100, or as PNG if that strays too."""
    count, height, width, channels = array.shape
    padded = _padded(height)
    members = {"shape": np.asarray(array.shape, np.int64)}
    for c in range(-(-count // CHUNK)):
        part = array[c * CHUNK : (c + 1) * CHUNK]
        if padded != height:  # repeat the last row: no JPEG block spans two fields
            part = np.pad(part, ((0, 0), (0, padded - height), (0, 0), (0, 0)), mode="edge")
        for k in range(channels):
            image = np.ascontiguousarray(part[..., k].reshape(-1, width))
            members[f"c{c}_{k}"] = _encode_within(image, quality, max_error)
    return members


def _encode_within(image: np.ndarray, quality: int, max_error: int) -> np.ndarray:
    """JPEG at `quality`, else at 100, else PNG: the first whose values stay within `max_error`."""
    for q in dict.fromkeys((quality, 100)):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
        back = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if ok else None
        if back is not None and np.abs(back.astype(np.int16) - image).max() <= max_error:
            return data.reshape(-1)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode a cache image")
    return data.reshape(-1)


def cache_settings(
    kind: CacheKind,
    algorithm: str = DEFAULT_ALGORITHM,
    bound: float = DEFAULT_BOUND,
    fmt: CacheFormat = "npy",
    quality: int = DEFAULT_QUALITY,
    max_error: int = DEFAULT_MAX_ERROR,
) -> dict[str, Any]:
    """The settings that determine a cache's bytes (flow options do not apply to diff; JPEG
    options only to format jpeg, whose settings alone name the format: an npy cache's
    settings.json is as it always was)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown cache format {fmt!r}; choose one of {list(FORMATS)}")
    if fmt == "video":
        if kind != "diff":
            raise ValueError(
                f"format video (computed when read) is for differences only, not {kind!r}: "
                "flow takes too long to compute per clip; use npy or jpeg"
            )
        return {"format_version": FORMAT_VERSION, "kind": "diff", "format": "video"}
    jpeg = (
        {"format": "jpeg", "jpeg_quality": int(quality), "max_error": int(max_error)}
        if fmt == "jpeg"
        else {}
    )
    if kind == "diff":
        return {"format_version": FORMAT_VERSION, "kind": "diff", **jpeg}
    if kind != "flow":
        raise ValueError(f"unknown cache kind {kind!r}; choose 'flow' or 'diff'")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown flow algorithm {algorithm!r}; choose one of {list(ALGORITHMS)}")
    if not bound > 0:
        raise ValueError(f"flow bound must be positive, got {bound}")
    return {
        "format_version": FORMAT_VERSION,
        "kind": "flow",
        "algorithm": algorithm,
        "bound": float(bound),
        **jpeg,
    }


def build_cache(
    records: Sequence[VideoRecord],
    cache_dir: Path,
    kind: CacheKind,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    bound: float = DEFAULT_BOUND,
    fmt: CacheFormat = "npy",
    quality: int = DEFAULT_QUALITY,
    max_error: int = DEFAULT_MAX_ERROR,
    workers: int | None = None,
    show_progress: bool = True,
    shard: Shard | None = None,
) -> CacheReport:
    """Write the ``kind`` cache of every record (of `shard`, if given) that is not cached yet;
    see the module doc.

    Videos that cannot be decoded (or have fewer than 2 frames) are listed in
    ``report.broken`` and skipped; the others are still built.
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    settings = cache_settings(kind, algorithm, bound, fmt, quality, max_error)
    _check_unique_ids(records)
    if fmt == "video":  # nothing is stored per video: settings.json says where diffs come from
        records = []
    if shard is None:
        report = CacheReport(invalidated=_prepare_dir(cache_dir, settings))
    else:
        records = [r for r in records if shard.holds(r.id)]
        names = [cache_path(cache_dir, r.id, fmt).name for r in records]
        _join_dir(cache_dir, settings, shard, names)
        report = CacheReport()

    todo = [r for r in records if not cache_path(cache_dir, r.id, fmt).is_file()]
    report.skipped_existing = len(records) - len(todo)
    if todo:
        _build_all(todo, cache_dir, settings, workers or os.cpu_count() or 1, show_progress, report)
    report.broken.sort()
    report.seconds = time.perf_counter() - start
    return report


def _check_unique_ids(records: Sequence[VideoRecord]) -> None:
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise ValueError(f"video id {record.id!r} appears twice; cache files are named by id")
        seen.add(record.id)


def _prepare_dir(cache_dir: Path, settings: dict[str, Any]) -> int:
    """Remove stale files, write settings.json; return how many cache files were invalidated."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(cache_dir)  # of a killed build
    settings_path = cache_dir / SETTINGS_FILE
    try:
        existing = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    invalidated = 0
    if existing != settings:
        for stale in _cache_files(cache_dir):
            stale.unlink()
            invalidated += 1
        atomic_write_text(settings_path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return invalidated


def _join_dir(cache_dir: Path, settings: dict[str, Any], shard: Shard, names: list[str]) -> None:
    """A shard's start: the directory holds this build's settings (or nothing yet); only the
    shard's own temp files are removed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings_path = cache_dir / SETTINGS_FILE
    try:
        existing = json.loads(settings_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        existing = None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{settings_path}: unreadable ({err})") from None
    if existing is None and any(_cache_files(cache_dir)):
        existing = "files without settings.json"
    if existing is not None and existing != settings:
        raise ConfigError(
            f"shard {shard}: {cache_dir} holds a cache of other settings ({existing}); a shard "
            "never deletes other shards' files: clear the directory, or rebuild it unsharded, "
            "before a sharded build."
        )
    if existing is None:  # every shard writes the same bytes: the last rename wins, harmlessly
        atomic_write_text(settings_path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    remove_temp_files(cache_dir, names)


def _cache_files(cache_dir: Path) -> list[Path]:
    """Every video's cache file in the directory, whatever its format."""
    return [path for suffix in SUFFIX.values() for path in cache_dir.glob(f"*{suffix}")]


def _build_all(
    todo: list[VideoRecord],
    cache_dir: Path,
    settings: dict[str, Any],
    workers: int,
    show_progress: bool,
    report: CacheReport,
) -> None:
    kind, fmt = settings["kind"], settings.get("format", "npy")
    algorithm, bound = settings.get("algorithm", ""), settings.get("bound", 0.0)
    jpeg = (settings.get("jpeg_quality", 0), settings.get("max_error", 0))
    tasks = [
        (str(r.path), str(cache_path(cache_dir, r.id, fmt)), kind, algorithm, bound, fmt, *jpeg)
        for r in todo
    ]
    with progress_bar(f"{kind} cache", len(todo), show_progress) as advance:
        # always worker processes (even one): OpenCV runs one thread there, see _one_thread
        errors = run_parallel(
            _build_one,
            tasks,
            max(workers, 1),
            progress=lambda _done, _total: advance(),
            initializer=_one_thread,
        )
    for record, error in zip(todo, errors, strict=True):
        if error is None:
            report.built += 1
        else:
            report.broken.append((record.id, error))


def _one_thread() -> None:
    # One OpenCV thread per process: the pool is the parallelism, and results are reproducible.
    cv2.setNumThreads(1)


def _build_one(task: tuple[str, str, str, str, float, str, int, int]) -> str | None:
    """Compute and save one video's cache; return why it failed, or None."""
    video, out, kind, algorithm, bound, fmt, quality, max_error = task
    try:
        count = num_frames(Path(video))
        if count < 2:
            return f"{video}: has {count} frame(s); {kind} needs at least 2"
        frames = read_frames(Path(video), np.arange(count))
    except VideoDecodeError as err:
        return str(err)
    if kind == "flow":
        array = quantize_flow(compute_flow(frames, algorithm), bound)
    else:
        array = quantized_diff(frames[:-1], frames[1:])
    if fmt == "jpeg":
        members = encode_jpeg_fields(array, quality, max_error)
        atomic_write(Path(out), lambda tmp: write_npz(tmp, members))
    else:
        atomic_write(Path(out), lambda tmp: _save_npy(tmp, array))
    return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Through a file handle: np.save(path) would append ".npy" to the temp file's name.
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def write_npz(path: Path, members: dict[str, np.ndarray]) -> None:
    """A jpeg cache file of `encode_jpeg_fields` members; stored, not deflated (JPEG and PNG
    bytes do not compress further)."""
    with open(path, "wb") as f:
        np.savez(f, **members)
