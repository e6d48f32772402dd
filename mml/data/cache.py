"""Flow and RGB-difference caches: one uint8 ``.npy`` per video, built in parallel, incrementally.

Layout of a cache directory::

    settings.json      what the files hold (kind, flow algorithm and bound, format version)
    <video id>.npy     flow: (F-1, H, W, 2) uint8, see mml.data.flow.quantize_flow
                       diff: (F-1, H, W, 3) uint8, see mml.data.flow.quantize_diff

Files are at the video's own resolution and written atomically (mml.fsio), so a killed build
leaves only complete ``.npy`` files (and hidden temp files, removed by the next build); a
re-run builds what is missing. If ``settings.json`` differs from the requested settings, every
``.npy`` in the directory is stale and is deleted first. One build per directory at a time,
except shards of one build.
Readers open files with :func:`open_cached` (memory-mapped: a clip reads only its frames).

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from mml.config import CacheConfig, ConfigError
from mml.data.annotations import VideoRecord
from mml.data.flow import ALGORITHMS, compute_flow, quantize_diff, quantize_flow, rgb_diff
from mml.data.video import VideoDecodeError, num_frames, read_frames
from mml.fsio import atomic_write, atomic_write_text, remove_temp_files
from mml.progress import progress_bar
from mml.workers import run_parallel

CacheKind = Literal["flow", "diff"]
# the config's defaults (one set of defaults: params.yaml = mml.config = these)
DEFAULT_ALGORITHM: str = CacheConfig.model_fields["flow_algorithm"].default
DEFAULT_BOUND: float = CacheConfig.model_fields["flow_bound"].default
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


def cache_path(cache_dir: Path, video_id: str) -> Path:
    """The cache file of one video."""
    return Path(cache_dir) / f"{video_id}.npy"


def open_cached(cache_dir: Path, video_id: str) -> np.ndarray:
    """The cached array of one video, memory-mapped read-only (index it to read frames)."""
    return np.load(cache_path(cache_dir, video_id), mmap_mode="r")


def cache_settings(
    kind: CacheKind, algorithm: str = DEFAULT_ALGORITHM, bound: float = DEFAULT_BOUND
) -> dict[str, Any]:
    """The settings that determine a cache's bytes (flow options do not apply to diff)."""
    if kind == "diff":
        return {"format_version": FORMAT_VERSION, "kind": "diff"}
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
    }


def build_cache(
    records: Sequence[VideoRecord],
    cache_dir: Path,
    kind: CacheKind,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    bound: float = DEFAULT_BOUND,
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
    settings = cache_settings(kind, algorithm, bound)
    _check_unique_ids(records)
    if shard is None:
        report = CacheReport(invalidated=_prepare_dir(cache_dir, settings))
    else:
        records = [r for r in records if shard.holds(r.id)]
        _join_dir(cache_dir, settings, shard, [cache_path(cache_dir, r.id).name for r in records])
        report = CacheReport()

    todo = [r for r in records if not cache_path(cache_dir, r.id).is_file()]
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
    """Remove stale files, write settings.json; return how many .npy files were invalidated."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(cache_dir)  # of a killed build
    settings_path = cache_dir / SETTINGS_FILE
    try:
        existing = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    invalidated = 0
    if existing != settings:
        for stale in cache_dir.glob("*.npy"):
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
    if existing is None and any(cache_dir.glob("*.npy")):
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


def _build_all(
    todo: list[VideoRecord],
    cache_dir: Path,
    settings: dict[str, Any],
    workers: int,
    show_progress: bool,
    report: CacheReport,
) -> None:
    kind = settings["kind"]
    algorithm, bound = settings.get("algorithm", ""), settings.get("bound", 0.0)
    tasks = [(str(r.path), str(cache_path(cache_dir, r.id)), kind, algorithm, bound) for r in todo]
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


def _build_one(task: tuple[str, str, str, str, float]) -> str | None:
    """Compute and save one video's cache; return why it failed, or None."""
    video, out, kind, algorithm, bound = task
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
        array = quantize_diff(rgb_diff(frames))
    atomic_write(Path(out), lambda tmp: _save_npy(tmp, array))
    return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Through a file handle: np.save(path) would append ".npy" to the temp file's name.
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
