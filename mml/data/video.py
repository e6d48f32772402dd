"""Video files: frame-accurate reading (decord, PyAV fallback), deterministic writing (PyAV).

Reading policy (checked on this machine with decord 0.6.0 and PyAV 18; see ``tests/test_video.py``):

- decord's random access (``VideoReader.get_batch``) numbers frames by the sorted timestamps of
  *all* demuxed packets and seeks by those timestamps. Where one packet is one shown frame it is
  frame-accurate: VP8 WebM, VP9 WebM and H.264 MP4 (B-frames) returned the right frames for
  sorted, permuted, backward and repeated indices at 1-30 fps, key-frame intervals 12-1000,
  WebM without Cues, and wrong key-frame flags. (dmlc/decord#91, wrong frames from VP8 WebM,
  did not reproduce here.)
- It is wrong when packets and frames differ. An MP4 whose edit list hides its first packets
  (a clip cut with stream copy) has more packets than frames: decord counts them, so after a
  seek it returns a frame k positions later, and past the real end it repeats the last frame.
- It cannot open a WebM without a duration (live or streamed recording) or without an average
  frame rate (variable frame rate), files that PyAV decodes without trouble.

So :func:`probe` demuxes the file once with PyAV (no decoding; results are memoised per path,
size and mtime), notes where its key frames are, and flags it for decord only if no packet is
discarded, every packet has a unique timestamp, and the container states a duration and a
frame rate. Flagged files, and files where decord fails or disagrees on the frame count, are
read by :func:`read_frames_sequential`: one PyAV decode from frame 0. Both paths give the same
pixels (same decoder and colour conversion), so a file's frames do not depend on the path taken.
Display-rotation metadata is ignored by the PyAV path; this project writes none.

Which path is faster depends on the request. decord takes longer to open a file than PyAV
(it indexes every packet and builds a conversion graph first): about as long as decoding 33
frames at 32 x 32 and 3 at 426 x 240 (:func:`decord_worth`, measured by
``benchmarks/decode_paths.py``). So :func:`read_frames` decodes from frame 0 with PyAV unless
decord's seeking to key frames would skip more frames than that (:func:`skipped_by_seeking`):
the synthetic default's clips go to PyAV, a few frames of a long video to decord. PyAV >= 17
converts a frame to RGB with a pool of threads unless told otherwise; started for every frame,
that costs more than decoding a small one, so the conversion runs on one thread (a loader's
parallelism is its worker processes).

A video can also be read from memory (:class:`VideoBytes`, what a client sends a server):
both readers take the bytes as a file object, nothing is written to disk, and the frames are
those of the same bytes read from a file.

Import order: decord loads its own FFmpeg and libvpx into the global symbol namespace. If it is
imported before ``av`` in a process, PyAV's VP8/VP9 *encoders* fail to open (decoding is not
affected). This module imports ``av`` first; other modules should import it, not decord alone.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np

from mml.fsio import atomic_write
from mml.workers import run_parallel

log = logging.getLogger(__name__)

# codec name -> (PyAV encoder, file suffix, container format, encoder options). Quality is
# high (decoded frames stay close to the input); one thread makes the output deterministic.
_ENCODERS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "vp9": (
        "libvpx-vp9",
        ".webm",
        "webm",
        {"crf": "15", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "0"},
    ),
    "vp8": ("libvpx", ".webm", "webm", {"crf": "10", "b": "10M", "deadline": "good"}),
    "h264": ("libx264", ".mp4", "mp4", {"crf": "15", "preset": "fast"}),
}
# A key frame every 16 frames: a random access decodes at most 15 frames it does not return.
KEYFRAME_INTERVAL = 16
# What a read costs, in ms (`python benchmarks/decode_paths.py`, this machine, 2026-12-04;
# fitted at 32 x 32 and 426 x 240): decoding a frame takes FRAME_MS[0] + FRAME_MS[1] * pixels
# with either reader, and decord takes DECORD_EXTRA_MS[0] + DECORD_EXTRA_MS[1] * pixels longer
# to open a file than PyAV (it indexes every packet and builds a conversion graph first).
FRAME_MS = (0.018, 5.1e-6)
DECORD_EXTRA_MS = (0.76, 5.8e-6)


class VideoBytes:
    """A video file's bytes in memory, read like a file of that content and never written to
    disk; `name` stands for it in messages. Its probe is kept on the object (not in the
    per-path memo, which would grow with every request a server gets)."""

    __slots__ = ("data", "name", "info")

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = data
        self.name = name
        self.info: VideoInfo | None = None

    def __str__(self) -> str:
        return self.name

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)


VideoSource = Path | str | VideoBytes  # what the readers take: a file's path or its bytes


class VideoDecodeError(RuntimeError):
    """A video could not be read: missing, empty, truncated, corrupt or not a video."""

    def __init__(self, path: VideoSource, reason: str) -> None:
        self.path = path if isinstance(path, VideoBytes) else Path(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What one demux pass (no decoding) tells about a video file."""

    num_frames: int
    height: int
    width: int
    fps: float | None
    decord_issue: str | None  # why decord's random access would be wrong; None if it is safe
    keyframes: tuple[int, ...] = ()  # indices of the key frames; () if unknown (decord_issue)


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str = "vp9") -> None:
    """Encode ``frames`` ((T, H, W, 3) uint8 RGB) to ``path``, atomically and deterministically.

    ``codec`` is ``vp9`` or ``vp8`` (``.webm``) or ``h264`` (``.mp4``). H and W must be even
    (yuv420p halves the chroma planes); odd sizes raise ``ValueError`` rather than being padded,
    so a read returns exactly the size that was written. The same frames give the same bytes.
    """
    path = Path(path)
    encoder, _, container_format, options = _encoder_for(path, codec)
    frames = _check_frames(frames)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r} for {path}")
    rate = Fraction(fps).limit_denominator(1001)

    def encode(tmp: Path) -> None:
        # bitexact: no random UIDs or version strings in the container.
        with av.open(str(tmp), "w", format=container_format, options={"fflags": "+bitexact"}) as c:
            stream = c.add_stream(encoder, rate=rate, options=options)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            stream.codec_context.gop_size = KEYFRAME_INTERVAL
            _open_encoder(stream, path)
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = i, 1 / rate
                c.mux(stream.encode(frame))
            c.mux(stream.encode(None))
        os.chmod(tmp, 0o644)

    atomic_write(path, encode)


def _open_encoder(stream: av.VideoStream, path: Path) -> None:
    try:
        stream.codec_context.open()
    except av.error.FFmpegError as err:
        raise RuntimeError(
            f"cannot open the {stream.codec_context.name} encoder to write {path}: {err}. "
            "If decord was imported before av in this process, decord's bundled libvpx "
            "shadows PyAV's: import av (or mml.data.video) first."
        ) from err


def suffix_for(codec: str) -> str:
    """The file suffix `write_video` uses for `codec`: ".webm" (vp9, vp8) or ".mp4" (h264)."""
    if codec not in _ENCODERS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(_ENCODERS)}")
    return _ENCODERS[codec][1]


def _encoder_for(path: Path, codec: str) -> tuple[str, str, str, dict[str, str]]:
    if codec not in _ENCODERS:
        raise ValueError(f"unknown codec {codec!r} for {path}; choose one of {sorted(_ENCODERS)}")
    spec = _ENCODERS[codec]
    if path.suffix.lower() != spec[1]:
        raise ValueError(f"{codec} is written to {spec[1]} files, but the path is {path}")
    return spec


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(
            f"frames must be a non-empty (T, H, W, 3) uint8 array, got {frames.dtype} "
            f"{frames.shape}"
        )
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(
            f"frames are {height}x{width}; yuv420p video needs an even height and width: "
            "crop or pad the frames before writing"
        )
    return np.ascontiguousarray(frames)


def num_frames(path: Path) -> int:
    """Exact number of frames the file decodes to (one demux pass, no decoding; memoised).

    Counts the video packets that are shown: packets an MP4 edit list discards are left out,
    which is where container metadata and decord's ``len()`` overcount.
    """
    return probe(path).num_frames


def probe(path: VideoSource) -> VideoInfo:
    """Frame count, size, frame rate and decord safety of a video file (memoised).

    Raises :class:`VideoDecodeError` if the file is missing, not a video, has no frames, or
    ends earlier than its container says (truncated).
    """
    if isinstance(path, VideoBytes):
        if path.info is None:
            path.info = _probe(path)
        return path.info
    key = _probe_key(Path(path))
    info = _PROBES.get(key)
    if info is None:
        info = _PROBES[key] = _probe(Path(key[0]))
    return info


# This process's probes, by (absolute path, size, mtime): a file that changes is probed again.
# Unbounded (a few hundred bytes a video, ~80 MB for Something-Something v2's 220k), so that a
# loader's workers, forked anew each epoch, inherit every video's probe from their parent.
_PROBES: dict[tuple[str, int, int], VideoInfo] = {}
PROBE_CHUNK = 256  # videos per task of probe_all's worker processes


def _probe_key(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError as err:
        raise VideoDecodeError(path, f"cannot open the file ({err.strerror})") from None
    return str(path.absolute()), stat.st_size, stat.st_mtime_ns


def probe_all(paths: Sequence[Path], workers: int = 0) -> int:
    """Probe every video of `paths` not probed yet into this process's memo, in `workers`
    processes (0: here); returns how many are memoised. Files that cannot be probed are left
    out: `probe` raises for them when they are read, so their reader reports them."""
    keys = {p: _memo_key(p) for p in map(Path, paths)}  # one stat a file
    todo = [p for p, key in keys.items() if key is not None and key not in _PROBES]
    chunks = [todo[i : i + PROBE_CHUNK] for i in range(0, len(todo), PROBE_CHUNK)]
    processes = workers if workers > 1 and len(chunks) > 1 else 0  # one: here is as fast
    for found in run_parallel(_probe_chunk, chunks, processes):
        _PROBES.update(found)
    return sum(key in _PROBES for key in keys.values())


_DECODED: dict[tuple[str, int, int], np.ndarray] = {}  # probe key -> every frame, (N, H, W, 3)


def keep_decoded(paths: Sequence[Path], budget: int) -> bool:
    """Decode the videos of `paths` whole, once, into this process's memo if, with what it
    already holds, their frames fit in `budget` bytes; :func:`read_frames` then indexes the memo
    instead of decoding. Returns whether they are kept.

    For a dataset that is small next to memory and read many times: a training stage's loader
    workers, forked from this process every epoch, inherit the memo and decode nothing. All or
    nothing: a dataset that does not fit keeps no video (keeping a part would only cost a pass
    over it). The frames are what :func:`read_frames` returns (it decodes them here), so a model
    sees the same pixels. Files that cannot be read are left out: their reader reports them.
    """
    todo: list[tuple[Path, tuple[str, int, int], VideoInfo]] = []
    for path in map(Path, paths):
        try:
            key, info = _probe_key(path), probe(path)
        except VideoDecodeError:
            continue
        if key not in _DECODED:
            todo.append((path, key, info))
    held = sum(frames.nbytes for frames in _DECODED.values())
    if held + sum(i.num_frames * i.height * i.width * 3 for _, _, i in todo) > budget:
        return False
    for path, key, info in todo:
        try:
            frames = read_frames(path, np.arange(info.num_frames))
        except VideoDecodeError:
            continue
        frames.setflags(write=False)
        _DECODED[key] = frames
    return True


def _memo_key(path: Path) -> tuple[str, int, int] | None:
    try:
        return _probe_key(path)
    except VideoDecodeError:
        return None


def _probe_chunk(paths: list[Path]) -> dict[tuple[str, int, int], VideoInfo]:
    found = {}
    for path in paths:
        try:
            key = _probe_key(path)
            found[key] = _probe(Path(key[0]))
        except VideoDecodeError:
            continue
    return found


def _probe(path: Path | VideoBytes) -> VideoInfo:
    with _open_input(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "the file has no video stream")
        stream = container.streams.video[0]
        pts: list[int | None] = []
        keys: list[int | None] = []  # the key frames' timestamps
        discarded, end = 0, 0.0
        for packet in container.demux():
            if packet.size == 0:
                continue
            if packet.pts is not None and packet.time_base is not None:
                end = max(end, float((packet.pts + packet.duration) * packet.time_base))
            if packet.stream.index != stream.index:
                continue
            if packet.is_discard:
                discarded += 1
            else:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        duration = None if container.duration is None else container.duration / av.time_base
        rate = stream.average_rate
        height, width = stream.codec_context.height, stream.codec_context.width
    fps = float(rate) if rate else None
    if not pts:
        raise VideoDecodeError(path, "the video stream has no frames")
    # A truncated WebM still demuxes (its frames are streamable): compare with the header.
    if duration is not None and end < duration - max(0.1, 2 / (fps or 10)):
        raise VideoDecodeError(
            path, f"truncated: the container says {duration:.2f} s, the data ends at {end:.2f} s"
        )
    issue = _decord_issue(pts, discarded, duration, fps)
    keyframes: tuple[int, ...] = ()
    if issue is None:  # unique timestamps: frame i is the i-th smallest
        order = {p: i for i, p in enumerate(sorted(pts))}
        keyframes = tuple(sorted(order[p] for p in keys))
    return VideoInfo(len(pts), height, width, fps, issue, keyframes)


def _decord_issue(
    pts: list[int | None], discarded: int, duration: float | None, fps: float | None
) -> str | None:
    """Why decord would misread or fail on a file with these packets (None: it is safe)."""
    if discarded:
        return f"an edit list discards {discarded} packets, which decord counts as frames"
    if any(p is None for p in pts) or len(set(pts)) != len(pts):
        return "packet timestamps are missing or repeated, decord indexes frames by them"
    if duration is None or fps is None:
        return "no container duration or frame rate, decord cannot open the file"
    return None


@contextmanager
def _open_input(path: Path | VideoBytes) -> Iterator[av.container.InputContainer]:
    """``av.open`` for reading, with every PyAV failure turned into a VideoDecodeError."""
    try:
        with av.open(_source(path), "r") as container:
            yield container
    except (av.error.FFmpegError, OSError) as err:
        raise VideoDecodeError(path, f"{type(err).__name__}: {err}") from err


def _source(path: Path | VideoBytes) -> str | io.BytesIO:
    """What PyAV and decord open: the file's path, or a file object over the bytes."""
    return path.open() if isinstance(path, VideoBytes) else str(path)


def read_frames(path: VideoSource, indices: np.ndarray | Sequence[int]) -> np.ndarray:
    """Frames ``indices`` of the video, as (len(indices), H, W, 3) uint8 RGB, in that order.

    Indices may be unsorted and repeated. A video kept by :func:`keep_decoded` is indexed, not
    decoded. Otherwise decord decodes them unless :func:`probe` found a
    reason it would return wrong frames; then (or if decord fails) one sequential PyAV decode
    does (module docstring). Out-of-range indices raise ``ValueError``; unreadable files raise
    :class:`VideoDecodeError`.
    """
    path, wanted, info = _checked_request(path, indices)
    if not len(wanted):
        return np.empty((0, info.height, info.width, 3), np.uint8)
    if _DECODED and isinstance(path, Path):
        kept = _DECODED.get(_probe_key(path))
        if kept is not None:
            return kept[wanted]  # a copy (integer indexing)
    if info.decord_issue is not None:
        log.debug("%s: sequential decoding, %s", path, info.decord_issue)
    elif skipped_by_seeking(wanted, info.keyframes) > decord_worth(info.height, info.width):
        frames = _read_with_decord(path, wanted, info.num_frames)
        if frames is not None:
            return frames
    return _decode_sequentially(path, wanted)


def decord_worth(height: int, width: int) -> float:
    """How many frames decord's seeking must skip to read faster than PyAV decoding from frame 0
    (about 33 at 32 x 32, 3 at 426 x 240)."""
    pixels = height * width
    extra = DECORD_EXTRA_MS[0] + DECORD_EXTRA_MS[1] * pixels
    return extra / (FRAME_MS[0] + FRAME_MS[1] * pixels)


def skipped_by_seeking(wanted: np.ndarray, keyframes: Sequence[int]) -> int:
    """How many of the frames a decode from frame 0 to ``max(wanted)`` goes through a reader
    that seeks to the key frame before each wanted frame (decord's) does not decode."""
    decoded, position = 0, 0  # position: the next frame the decoder would output
    for i in np.unique(wanted).tolist():
        before = bisect.bisect_right(keyframes, i) - 1
        key = keyframes[before] if before >= 0 else 0
        start = key if key > position else position
        decoded += i - start + 1
        position = i + 1
    return int(np.max(wanted)) + 1 - decoded


def read_frames_sequential(path: VideoSource, indices: np.ndarray | Sequence[int]) -> np.ndarray:
    """Like :func:`read_frames`, always by one PyAV decode from frame 0 to the largest index.

    The reference that :func:`read_frames` agrees with, and its fallback; frame i is the i-th
    frame the decoder outputs.
    """
    path, wanted, info = _checked_request(path, indices)
    if not len(wanted):
        return np.empty((0, info.height, info.width, 3), np.uint8)
    return _decode_sequentially(path, wanted)


def _checked_request(
    path: VideoSource, indices: np.ndarray | Sequence[int]
) -> tuple[Path | VideoBytes, np.ndarray, VideoInfo]:
    """The path, the indices as int64 and the file's probe, with the indices range-checked."""
    path = path if isinstance(path, VideoBytes) else Path(path)
    wanted = np.asarray(indices)
    if wanted.ndim != 1 or not (wanted.size == 0 or np.issubdtype(wanted.dtype, np.integer)):
        raise ValueError(f"frame indices for {path} must be a 1-D sequence of integers")
    wanted = wanted.astype(np.int64)
    info = probe(path)
    bad = wanted[(wanted < 0) | (wanted >= info.num_frames)]
    if len(bad):
        raise ValueError(
            f"frame index {int(bad[0])} is out of range for {path}, "
            f"which has {info.num_frames} frames"
        )
    return path, wanted, info


def _read_with_decord(path: Path | VideoBytes, wanted: np.ndarray, count: int) -> np.ndarray | None:
    """decord random access; None if decord fails or counts frames differently than probe."""
    try:
        reader = decord.VideoReader(_source(path), ctx=decord.cpu(0), num_threads=1)
        if len(reader) != count:
            log.debug("%s: decord counts %d frames, not %d", path, len(reader), count)
            return None
        # Sorted unique indices: each key frame interval is decoded once, never backwards.
        unique, inverse = np.unique(wanted, return_inverse=True)
        batch = reader.get_batch(unique.tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError) as err:
        log.debug("%s: decord failed (%s), decoding sequentially", path, err)
        return None
    return batch[inverse]


def _decode_sequentially(path: Path | VideoBytes, wanted: np.ndarray) -> np.ndarray:
    """PyAV decode from frame 0 up to ``max(wanted)``; keeps the wanted frames."""
    needed, decoded = set(wanted.tolist()), {}
    last, count = int(wanted.max()), 0
    with _open_input(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for count, frame in enumerate(container.decode(stream), start=1):
            if count - 1 in needed:  # one thread: PyAV >= 17 starts a pool per frame otherwise
                decoded[count - 1] = frame.to_ndarray(format="rgb24", threads=1)
            if count > last:
                break
    if count <= last:  # more shown packets than decoded frames: a corrupt stream
        raise VideoDecodeError(path, f"frame {last} requested, only {count} frames decode")
    return np.stack([decoded[i] for i in wanted.tolist()])
