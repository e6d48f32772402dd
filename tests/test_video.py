"""Tests for mml.data.video: frame-accurate reads, the decord fallback, errors, writing."""

from __future__ import annotations

import re
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from videos import decode_index_pattern, index_pattern_frames

from mml.data import video
from mml.data.video import (
    VideoBytes,
    VideoDecodeError,
    num_frames,
    probe,
    read_frames,
    read_frames_sequential,
    skipped_by_seeking,
    write_video,
)

NUM = 60
SIZE = 64
CODECS = [("vp8", ".webm"), ("vp9", ".webm"), ("h264", ".mp4")]


def _indices_of(frames: np.ndarray) -> list[int]:
    return [decode_index_pattern(frame) for frame in frames]


@pytest.fixture(scope="module", params=CODECS, ids=[codec for codec, _ in CODECS])
def pattern_video(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    codec, suffix = request.param
    path = tmp_path_factory.mktemp(codec) / f"pattern{suffix}"
    write_video(path, index_pattern_frames(NUM, SIZE, SIZE), fps=25.0, codec=codec)
    return path


def _remux(src: Path, dst: Path, *, shift_frames: int = 0, options: dict | None = None) -> None:
    """Copy src's video packets to dst, presentation times moved ``shift_frames`` earlier."""
    fmt = "mp4" if dst.suffix == ".mp4" else "webm"
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt, options=options) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        step = round(1 / (in_stream.average_rate * in_stream.time_base))
        for packet in inp.demux(in_stream):
            if packet.dts is None:
                continue
            packet.pts -= shift_frames * step
            packet.dts -= shift_frames * step
            packet.stream = out_stream
            out.mux(packet)


def _keyframes(path: Path) -> set[int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        step = round(1 / (stream.average_rate * stream.time_base))
        return {p.pts // step for p in container.demux(stream) if p.is_keyframe and p.size}


def test_index_pattern_round_trip_and_checksum():
    frames = index_pattern_frames(4096, 16, 16)
    assert _indices_of(frames[[0, 1, 77, 4095]]) == [0, 1, 77, 4095]
    for blank in (0, 255):
        with pytest.raises(ValueError, match="index pattern"):
            decode_index_pattern(np.full((16, 16, 3), blank, np.uint8))
    flipped = frames[5].copy()
    flipped[:4, :4] = 255 - flipped[:4, :4]  # one wrong bit
    with pytest.raises(ValueError, match="index pattern"):
        decode_index_pattern(flipped)


def test_num_frames_matches_a_full_decode(pattern_video: Path):
    assert num_frames(pattern_video) == NUM
    assert _indices_of(read_frames_sequential(pattern_video, range(NUM))) == list(range(NUM))
    assert probe(pattern_video).decord_issue is None  # decord path is the one under test


@pytest.mark.parametrize(
    "indices",
    [
        list(range(0, NUM, 7)),  # sorted
        np.random.default_rng(0).permutation(NUM).tolist(),  # random permutation
        [50, 10, 40, 5, 5, 59, 0, 30, 29, 29, 1],  # backward jumps and repeats
        [NUM - 1],  # last frame
    ],
    ids=["sorted", "permutation", "backward-repeats", "last"],
)
def test_read_frames_is_frame_accurate(pattern_video: Path, indices: list[int]):
    frames = read_frames(pattern_video, np.array(indices))
    assert frames.shape == (len(indices), SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert _indices_of(frames) == indices
    # Identical pixels to the plain sequential decode, not only the same frame numbers.
    assert np.array_equal(frames, read_frames_sequential(pattern_video, indices))


def test_probe_finds_the_key_frames(pattern_video: Path):
    keyframes = probe(pattern_video).keyframes
    assert keyframes == tuple(sorted(_keyframes(pattern_video)))
    assert keyframes[0] == 0 and len(keyframes) > 1  # KEYFRAME_INTERVAL 16 in 60 frames


def test_skipped_by_seeking_counts_the_frames_a_seeking_reader_does_not_decode():
    keys = (0, 16, 32, 48)
    assert skipped_by_seeking(np.array([59]), keys) == 48  # decodes 48..59 only
    assert skipped_by_seeking(np.array([0, 20]), keys) == 15  # 0, then 16..20
    assert skipped_by_seeking(np.array([20, 0, 20]), keys) == 15  # order and repeats: the same
    assert skipped_by_seeking(np.array([5, 3]), keys) == 0  # one key-frame interval
    assert skipped_by_seeking(np.array([59]), ()) == 0  # key frames unknown: no seeking
    assert skipped_by_seeking(np.array([59]), (8, 40)) == 40  # no key frame at 0


@pytest.mark.parametrize(
    ("indices", "by_decord"),
    [([NUM - 1, 50], True), ([0, 9, 3], False), (list(range(0, NUM, 7)), None)],
    ids=["late-frames", "early-frames", "spread"],
)
def test_read_frames_takes_decord_only_where_seeking_saves_decoding(
    pattern_video: Path, monkeypatch: pytest.MonkeyPatch, indices: list[int], by_decord
):
    """`by_decord`: the path every codec must take; None: it depends on the codec's key frames
    (x264 adds some where the picture changes), as `skipped_by_seeking` counts them."""
    calls = []

    def spy(path, wanted, count):
        calls.append(list(wanted))
        return real(path, wanted, count)

    real = video._read_with_decord
    monkeypatch.setattr(video, "_read_with_decord", spy)
    frames = read_frames(pattern_video, indices)
    saves = skipped_by_seeking(np.array(indices), probe(pattern_video).keyframes)
    assert bool(calls) == (saves > video.decord_worth(SIZE, SIZE))
    if by_decord is not None:
        assert bool(calls) == by_decord
    assert _indices_of(frames) == indices  # either way, the frames asked for
    assert np.array_equal(frames, read_frames_sequential(pattern_video, indices))


@pytest.mark.parametrize("read", [read_frames, read_frames_sequential])
def test_read_empty_and_out_of_range(pattern_video: Path, read):
    assert read(pattern_video, []).shape == (0, SIZE, SIZE, 3)
    for bad in (NUM, -1):
        with pytest.raises(ValueError, match=rf"{bad}.*{pattern_video.name}.*{NUM} frames"):
            read(pattern_video, [0, bad])


def test_decord_misreads_mp4_edit_list_and_read_frames_does_not(tmp_path: Path):
    """An MP4 cut by stream copy keeps hidden frames before its start (edit list):
    decord counts them, so its random access lands ``cut`` frames late."""
    src, dst = tmp_path / "full.mp4", tmp_path / "cut.mp4"
    write_video(src, index_pattern_frames(NUM, SIZE, SIZE), fps=25.0, codec="h264")
    cut = min(set(range(2, 16)) - _keyframes(src))  # start inside a key frame interval
    _remux(src, dst, shift_frames=cut)
    count = num_frames(dst)
    wanted = [30, 5, 20, 0, 35, count - 1]
    expected = [i + cut for i in wanted]  # frame i of the cut clip is frame i + cut

    assert _indices_of(read_frames_sequential(dst, range(count))) == list(range(cut, NUM))
    assert "edit list" in probe(dst).decord_issue
    reader = decord.VideoReader(str(dst), ctx=decord.cpu(0), num_threads=1)
    assert len(reader) > count
    assert _indices_of(reader.get_batch(wanted).asnumpy()) != expected
    assert _indices_of(read_frames(dst, wanted)) == expected


def test_webm_without_duration_is_read_without_decord(tmp_path: Path):
    """A live/streamed WebM has no duration: decord refuses it, read_frames falls back."""
    src, dst = tmp_path / "full.webm", tmp_path / "live.webm"
    write_video(src, index_pattern_frames(NUM, SIZE, SIZE), fps=25.0, codec="vp9")
    _remux(src, dst, options={"live": "1"})
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(dst), ctx=decord.cpu(0), num_threads=1)
    assert num_frames(dst) == NUM
    wanted = [59, 3, 3, 40, 0]
    assert _indices_of(read_frames(dst, wanted)) == wanted


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())


def _truncated(path: Path) -> None:
    full = path.with_name("full.webm")
    write_video(full, index_pattern_frames(NUM, SIZE, SIZE), fps=25.0, codec="vp9")
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make",
    [_random_bytes, lambda p: p.write_bytes(b""), _truncated, lambda p: None],
    ids=["random-bytes", "empty", "truncated", "missing"],
)
def test_unreadable_files_raise_video_decode_error(tmp_path: Path, make):
    path = tmp_path / "broken.webm"
    make(path)
    for read in (
        num_frames,
        lambda p: read_frames(p, [0]),
        lambda p: read_frames_sequential(p, [0]),
    ):
        with pytest.raises(VideoDecodeError, match=re.escape(str(path))):
            read(path)


def test_bytes_in_memory_read_like_their_file(pattern_video: Path, tmp_path: Path):
    """A video's bytes (what a client sends a server) give the file's frames, by decord and
    by the sequential decode, and its probe; nothing is written anywhere."""
    wanted = [50, 10, 40, 5, 5, 59, 0]
    data = VideoBytes(pattern_video.read_bytes(), "<sent>")
    assert probe(data) == probe(pattern_video) and data.info is not None
    assert np.array_equal(read_frames(data, wanted), read_frames(pattern_video, wanted))
    assert np.array_equal(read_frames_sequential(data, wanted), read_frames(pattern_video, wanted))
    with pytest.raises(ValueError, match=r"<sent>.*60 frames"):
        read_frames(data, [NUM])


def test_edit_listed_mp4_bytes_take_the_sequential_path(tmp_path: Path):
    src, dst = tmp_path / "full.mp4", tmp_path / "cut.mp4"
    write_video(src, index_pattern_frames(NUM, SIZE, SIZE), fps=25.0, codec="h264")
    _remux(src, dst, shift_frames=min(set(range(2, 16)) - _keyframes(src)))
    data = VideoBytes(dst.read_bytes())
    assert "edit list" in probe(data).decord_issue
    assert np.array_equal(read_frames(data, [30, 5, 0]), read_frames(dst, [30, 5, 0]))


@pytest.mark.parametrize(
    "make",
    [_random_bytes, lambda p: p.write_bytes(b""), _truncated],
    ids=["random-bytes", "empty", "truncated"],
)
def test_unreadable_bytes_raise_video_decode_error_naming_them(tmp_path: Path, make):
    path = tmp_path / "broken.webm"
    make(path)
    data = VideoBytes(path.read_bytes(), "<video_b64 of row 3>")
    for read in (probe, lambda d: read_frames(d, [0]), lambda d: read_frames_sequential(d, [0])):
        with pytest.raises(VideoDecodeError, match=re.escape("<video_b64 of row 3>")):
            read(data)


@pytest.mark.parametrize("codec,suffix", CODECS)
def test_write_video_is_deterministic_and_atomic(tmp_path: Path, codec: str, suffix: str):
    frames = index_pattern_frames(20, 32, 48)
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    write_video(first, frames, fps=12.5, codec=codec)
    write_video(second, frames, fps=12.5, codec=codec)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name]
    assert read_frames(first, [0]).shape == (1, 32, 48, 3)


def test_write_video_rejects_bad_input(tmp_path: Path):
    frames = index_pattern_frames(2, 32, 32)
    with pytest.raises(ValueError, match="even height and width"):
        write_video(tmp_path / "odd.webm", frames[:, :31], fps=25.0)
    with pytest.raises(ValueError, match=".mp4"):
        write_video(tmp_path / "wrong.webm", frames, fps=25.0, codec="h264")
    with pytest.raises(ValueError, match="unknown codec"):
        write_video(tmp_path / "x.webm", frames, fps=25.0, codec="av1")
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.webm", frames.astype(np.float32), fps=25.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_probe_all_memoises_every_readable_video_from_worker_processes(tmp_path, monkeypatch):
    paths = []
    for n in (5, 7, 9):
        paths.append(tmp_path / f"v{n}.webm")
        write_video(paths[-1], index_pattern_frames(n, 32, 32), fps=10.0)
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"not a video")
    monkeypatch.setattr(video, "_PROBES", {})
    monkeypatch.setattr(video, "PROBE_CHUNK", 1)  # four tasks over two worker processes
    assert video.probe_all([*paths, broken, tmp_path / "missing.webm"], workers=2) == 3
    assert sorted(info.num_frames for info in video._PROBES.values()) == [5, 7, 9]

    def demux(path):
        raise AssertionError(f"{path} demuxed again")

    monkeypatch.setattr(video, "_probe", demux)  # memoised: no demuxing from now on
    assert [num_frames(p) for p in paths] == [5, 7, 9]
    assert video.probe_all(paths, workers=2) == 3
    with pytest.raises(AssertionError, match="broken.webm demuxed again"):
        probe(broken)  # not memoised: its reader probes (and reports) it


def test_kept_videos_read_the_same_frames_without_decoding(pattern_video, tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_DECODED", {})
    rng = np.random.default_rng(0)
    requests = [list(range(NUM)), [NUM - 1, 0, 3, 3], *(rng.integers(0, NUM, 8) for _ in range(20))]
    decoded = [read_frames(pattern_video, r) for r in requests]
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"not a video")
    assert video.keep_decoded([pattern_video, broken], budget=NUM * SIZE * SIZE * 3)
    assert list(video._DECODED) == [video._probe_key(pattern_video)]  # the broken file left out

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(video, "_read_with_decord", no_decoding)
    monkeypatch.setattr(video, "_decode_sequentially", no_decoding)
    for r, expected in zip(requests, decoded, strict=True):
        frames = read_frames(pattern_video, r)
        np.testing.assert_array_equal(frames, expected)
        frames[:] = 0  # a copy: the kept frames stay as decoded
    np.testing.assert_array_equal(read_frames(pattern_video, requests[0]), decoded[0])
    with pytest.raises(ValueError, match="out of range"):
        read_frames(pattern_video, [NUM])
    with pytest.raises(VideoDecodeError):
        read_frames(broken, [0])  # still reported by its reader


def test_keep_decoded_is_all_or_nothing_and_follows_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_DECODED", {})
    paths = []
    for n in (5, 7):
        paths.append(tmp_path / f"v{n}.webm")
        write_video(paths[-1], index_pattern_frames(n, 32, 32), fps=10.0)
    size = 32 * 32 * 3
    assert not video.keep_decoded(paths, budget=12 * size - 1)  # one byte short: none kept
    assert video._DECODED == {}
    assert video.keep_decoded(paths, budget=12 * size)
    assert video.keep_decoded(paths, budget=12 * size)  # already held: nothing more needed
    # a file rewritten in place is a new file: read from disk, not from the memo
    write_video(paths[0], index_pattern_frames(6, 32, 32), fps=10.0)
    assert _indices_of(read_frames(paths[0], [5])) == [5]
