"""Cache formats for flow and differences at Something-Something v2's size: bytes per video and
milliseconds to read one training clip, for today's .npy and the candidates of issue 15.

Renders textured synthetic videos at 426 x 240, 45 frames (mml.data.synth), computes their
flow (`--algorithm`, TV-L1 as the caches do, or DIS for speed) and differences, quantises them
as today's caches do, and stores each video's fields as:

- npy: today's format, one uint8 array per video (memory-mapped reads);
- npz-deflate: one zip member per field (np.savez_compressed): lossless, a clip inflates only
  its fields;
- ffv1: one gray FFV1 video per video (components side by side), lossless, read by a
  sequential decode up to the clip's last field;
- png: one PNG per field component (lossless);
- webp-lossless: one lossless WebP per field component;
- jpeg-95: one JPEG per field component at quality 95, as TSN/TSM/denseflow store flow (lossy:
  the max and mean absolute error in quantisation steps are shown);
- mml-jpeg: mml's `cache.format: jpeg` (mml.data.cache): JPEG q95 per component and chunk of 8
  fields, a chunk stored at q100 (else PNG) where JPEG strays more than `--max-error` steps
  (default: the config's); read as the loader reads
  it (open the file, decode the chunks the clip touches);
- video (diff only): `cache.diff_from_video`, nothing stored: the clip's frames are decoded
  from the video and differenced when read (mml.data.cache.VideoDiffFields).

Reading a clip means T = 8 stacks of 5 consecutive fields at uniform positions; the RGB column
is decoding that clip's 8 frames with mml's decoder (what a clip of the RGB modality costs).

    python benchmarks/cache_formats.py [--videos 2] [--algorithm dis]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile
from pathlib import Path

import av  # noqa: F401  (before decord: see mml/data/video.py)
import cv2
import numpy as np
import ssv2_like

from mml.data.cache import (
    DEFAULT_MAX_ERROR,
    JpegFields,
    VideoDiffFields,
    encode_jpeg_fields,
    write_npz,
)
from mml.data.flow import compute_flow, quantize_diff, quantize_flow, rgb_diff
from mml.data.sampling import RGB_OFFSET
from mml.data.video import num_frames, read_frames

T, STACK = 8, 5


def clip_starts(count: int) -> np.ndarray:
    """The T positions of a uniform clip of a video with `count` fields."""
    return np.linspace(0, count - STACK, T).round().astype(int)


def clip_fields(count: int) -> np.ndarray:
    """The field indices of a uniform T x 5 clip of a video with `count` fields."""
    return np.unique((clip_starts(count)[:, None] + np.arange(STACK)).ravel())


def clip_frames(count: int) -> np.ndarray:
    """The RGB frames of the same clip: the centre of each position's 6-frame window, as
    mml.data.sampling reads RGB (`count` fields)."""
    return clip_starts(count) + RGB_OFFSET


def images(fields: np.ndarray, ext: str, params: list[int]) -> list[bytes]:
    """One encoded image per field and component."""
    out = []
    for field in fields:
        for c in range(field.shape[-1]):
            ok, data = cv2.imencode(ext, np.ascontiguousarray(field[..., c]), params)
            assert ok
            out.append(data.tobytes())
    return out


def decode_images(blobs: list[bytes], wanted: np.ndarray, channels: int) -> np.ndarray:
    fields = []
    for i in wanted:
        parts = [
            cv2.imdecode(np.frombuffer(blobs[i * channels + c], np.uint8), cv2.IMREAD_GRAYSCALE)
            for c in range(channels)
        ]
        fields.append(np.stack(parts, -1))
    return np.stack(fields)


def encode_video(path: Path, q: np.ndarray, codec: str, options: dict[str, str]) -> None:
    """The fields as one gray video: each frame holds a field's components side by side."""
    tiles = np.concatenate([q[..., c] for c in range(q.shape[-1])], axis=2)
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream(codec, rate=12, options=options)
        stream.width, stream.height = tiles.shape[2], tiles.shape[1]
        stream.pix_fmt = "gray"
        for tile in tiles:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(tile, format="gray")))
        out.mux(stream.encode())


def decode_video(path: Path, wanted: np.ndarray, channels: int) -> np.ndarray:
    """Fields `wanted` (sorted) by one sequential decode up to the last of them."""
    keep, out = set(wanted.tolist()), []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in keep:
                tile = frame.to_ndarray(format="gray")
                out.append(np.stack(np.split(tile, channels, axis=1), -1))
            if i >= wanted[-1]:
                break
    return np.stack(out)


def error_text(read: np.ndarray, exact: np.ndarray) -> str:
    """How far the fields read back stray from the exact ones, in quantisation steps."""
    err = np.abs(read.astype(int) - exact.astype(int))
    return "0" if not err.any() else f"max {err.max()}, mean {err.mean():.2f}"


def timed(read, repeats: int = 5) -> float:
    read()
    start = time.perf_counter()
    for _ in range(repeats):
        read()
    return (time.perf_counter() - start) / repeats * 1000


def measure(
    kind: str, q: np.ndarray, tmp: Path, max_error: int, video: Path
) -> dict[str, tuple[float, float, str]]:
    """{format: (bytes, ms per clip, error)} for one video's quantised fields `q` (of `video`)."""
    wanted, channels, rows = clip_fields(len(q)), q.shape[-1], {}
    npy = tmp / f"{kind}.npy"
    np.save(npy, q)
    rows["npy"] = (npy.stat().st_size, timed(lambda: np.load(npy, mmap_mode="r")[wanted] + 0), "0")
    npz = tmp / f"{kind}.npz"
    np.savez_compressed(npz, **{f"f{i}": f for i, f in enumerate(q)})

    def read_npz():
        with zipfile.ZipFile(npz) as z:
            return np.stack([np.load(io.BytesIO(z.read(f"f{i}.npy"))) for i in wanted])

    rows["npz-deflate"] = (npz.stat().st_size, timed(read_npz), "0")
    for name, codec, options in (("ffv1", "ffv1", {}),):
        path = tmp / f"{kind}-{name}.mkv"
        encode_video(path, q, codec, options)
        back = decode_video(path, np.arange(len(q)), channels)
        error = error_text(back, q)
        ms = timed(lambda path=path: decode_video(path, wanted, channels))
        rows[name] = (path.stat().st_size, ms, error)
    for name, ext, params in (
        ("png", ".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]),
        ("webp-lossless", ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        ("jpeg-95", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    ):
        blobs = images(q, ext, params)
        back = decode_images(blobs, np.arange(len(q)), channels)
        error = error_text(back, q)
        ms = timed(lambda blobs=blobs: decode_images(blobs, wanted, channels))
        rows[name] = (sum(map(len, blobs)), ms, error)
    path = tmp / f"{kind}-mml.npz"
    write_npz(path, encode_jpeg_fields(q, quality=95, max_error=max_error))
    error = error_text(JpegFields(path)[np.arange(len(q))], q)
    rows["mml-jpeg"] = (path.stat().st_size, timed(lambda: JpegFields(path)[wanted]), error)
    if kind == "diff":
        error = error_text(VideoDiffFields(video)[np.arange(len(q))], q)
        rows["video"] = (0, timed(lambda: VideoDiffFields(video)[wanted]), error)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--algorithm", default="dis", choices=["tvl1", "dis"])
    parser.add_argument("--max-error", type=int, default=DEFAULT_MAX_ERROR, help="mml-jpeg")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    totals: dict[tuple[str, str], list] = {}
    rgb_ms = []
    with tempfile.TemporaryDirectory(prefix="mml-cache-formats-") as tmp:
        root = Path(tmp)
        data = ssv2_like.render(root / "data", 2 * args.videos)
        for path in sorted(data.glob("videos/*"))[: args.videos]:
            frames = read_frames(path, np.arange(num_frames(path)))
            wanted = clip_frames(len(frames) - 1)
            rgb_ms.append(timed(lambda path=path, w=wanted: read_frames(path, w)))
            for kind, q in (
                ("flow", quantize_flow(compute_flow(frames, args.algorithm), 4.0)),
                ("diff", quantize_diff(rgb_diff(frames))),
            ):
                for fmt, row in measure(kind, q, root, args.max_error, path).items():
                    totals.setdefault((kind, fmt), []).append(row)
    print(f"\n426x240, 45 frames, {args.videos} videos, {args.algorithm} flow (bound 4 px)")
    print(f"RGB: decoding one clip's {T} frames: {np.mean(rgb_ms):.1f} ms\n")
    print("| cache | format | KB / video | × smaller than npy | ms / clip | error (steps) |")
    print("|---|---|---|---|---|---|")
    for (kind, fmt), rows in totals.items():
        size = np.mean([r[0] for r in rows])
        base = np.mean([r[0] for r in totals[kind, "npy"]])
        ms = np.mean([r[1] for r in rows])
        smaller = f"{base / size:.1f}" if size else "no file"
        print(f"| {kind} | {fmt} | {size / 1024:,.0f} | {smaller} | {ms:.1f} | {rows[0][2]} |")


if __name__ == "__main__":
    main()
