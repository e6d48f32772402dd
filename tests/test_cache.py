"""Flow/diff math (mml.data.flow) and the per-video caches (mml.data.cache), on real WebM files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mml.config import ConfigError
from mml.data.annotations import VideoRecord
from mml.data.cache import Shard, VideoDiffFields, build_cache, cache_path, open_cached
from mml.data.flow import (
    compute_flow,
    dequantize_diff,
    dequantize_flow,
    quantize_diff,
    quantize_flow,
    quantized_diff,
    rgb_diff,
)
from mml.data.video import num_frames, read_frames, write_video

SIZE, FRAMES, STEP = 32, 8, 2  # a 10x10 square moving STEP px/frame to the right


def square_frames(offset: int = 0) -> np.ndarray:
    frames = np.full((FRAMES, SIZE, SIZE, 3), 40, np.uint8)
    frames[..., 1] += np.arange(SIZE, dtype=np.uint8)[:, None]  # a little texture
    for t in range(FRAMES):
        left = 4 + STEP * t
        frames[t, 10 + offset : 20 + offset, left : left + 10] = (220, 200, 180)
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[VideoRecord]:
    root = tmp_path_factory.mktemp("videos")
    records = []
    for i in range(3):
        path = root / f"v{i}.webm"
        write_video(path, square_frames(offset=i), fps=12)
        records.append(VideoRecord(f"v{i}", path, (0,)))
    return records


def square_mask() -> np.ndarray:
    """Interior of the square in frame t (1 px margin), for each of the F-1 flow fields."""
    mask = np.zeros((FRAMES - 1, SIZE, SIZE), bool)
    for t in range(FRAMES - 1):
        mask[t, 11:19, 5 + STEP * t : 13 + STEP * t] = True
    return mask


@pytest.mark.parametrize("algorithm", ["tvl1", "dis"])
def test_flow_of_a_translating_square(videos, algorithm):
    path = videos[0].path
    frames = read_frames(path, np.arange(num_frames(path)))
    flow = compute_flow(frames, algorithm)
    assert flow.shape == (FRAMES - 1, SIZE, SIZE, 2) and flow.dtype == np.float32
    inside = flow[square_mask()]
    assert inside[:, 0].mean() == pytest.approx(STEP, abs=0.3)
    assert inside[:, 1].mean() == pytest.approx(0.0, abs=0.2)


def test_unknown_flow_algorithm_is_refused():
    with pytest.raises(ValueError, match="farneback"):
        compute_flow(square_frames(), "farneback")


def test_flow_quantisation_round_trip_and_clipping():
    bound = 20.0
    flow = np.linspace(-bound, bound, 1001, dtype=np.float32)
    q = quantize_flow(flow, bound)
    assert q.dtype == np.uint8 and q[0] == 0 and q[-1] == 255
    assert np.abs(dequantize_flow(q, bound) - flow).max() <= bound / 255 + 1e-5
    far = quantize_flow(np.array([-100.0, -bound, 0.0, bound, 100.0]), bound)
    assert far.tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds to even: 128
    assert dequantize_flow(far, bound)[[0, -1]].tolist() == [-bound, bound]


def test_diff_is_next_minus_previous_and_survives_quantisation():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    frames[1, 0, 0] = (0, 255, 0)
    frames[2, 0, 0] = (255, 0, 0)  # extremes: +255 and -255
    d = rgb_diff(frames)
    assert d.dtype == np.int16 and d.shape == (4, 6, 7, 3)
    np.testing.assert_array_equal(d, frames[1:].astype(int) - frames[:-1].astype(int))
    q = quantize_diff(d)
    assert q.dtype == np.uint8 and q[1, 0, 0].tolist() == [255, 0, 127]
    back = dequantize_diff(q) * 255
    assert back.min() >= -255 and back.max() <= 255
    assert np.abs(back - d).max() <= 1 + 1e-4  # one bit lost


@pytest.mark.parametrize("kind, channels", [("flow", 2), ("diff", 3)])
def test_build_writes_one_npy_per_video_then_skips(videos, tmp_path, kind, channels):
    report = build_cache(videos, tmp_path, kind, algorithm="dis", workers=1, show_progress=False)
    assert (report.built, report.skipped_existing, report.broken) == (3, 0, [])
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["v0.npy", "v1.npy", "v2.npy"]
    cached = open_cached(tmp_path, "v1")
    assert isinstance(cached, np.memmap)
    assert cached.shape == (FRAMES - 1, SIZE, SIZE, channels) and cached.dtype == np.uint8
    assert json.loads((tmp_path / "settings.json").read_text())["kind"] == kind

    again = build_cache(videos, tmp_path, kind, algorithm="dis", workers=1, show_progress=False)
    assert (again.built, again.skipped_existing, again.invalidated) == (0, 3, 0)


def test_cached_diff_equals_quantised_diff_of_the_decoded_frames(videos, tmp_path):
    build_cache(videos[:1], tmp_path, "diff", workers=1, show_progress=False)
    frames = read_frames(videos[0].path, np.arange(FRAMES))
    np.testing.assert_array_equal(open_cached(tmp_path, "v0"), quantize_diff(rgb_diff(frames)))


def test_uint8_quantized_diff_equals_the_int16_route_for_every_pair_of_values():
    values = np.arange(256, dtype=np.uint8)
    previous, following = np.meshgrid(values, values)  # all 65,536 pairs
    expected = quantize_diff(rgb_diff(np.stack([previous, following])))[0]
    np.testing.assert_array_equal(quantized_diff(previous, following), expected)


def test_diff_format_video_reads_what_a_stored_cache_holds(tmp_path):
    # 40 frames of moving texture: several keyframe intervals, so reads seek
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (SIZE, 4 * SIZE, 3), dtype=np.uint8)
    frames = np.stack([texture[:, t : t + SIZE] for t in range(0, 80, 2)])
    path = tmp_path / "long.webm"
    write_video(path, frames, fps=12)
    record = VideoRecord("long", path, (0,))
    stored = build_cache([record], tmp_path / "npy", "diff", workers=1, show_progress=False)
    assert stored.built == 1
    report = build_cache(
        [record], tmp_path / "video", "diff", fmt="video", workers=1, show_progress=False
    )
    assert (report.built, report.skipped_existing, report.broken) == (0, 0, [])
    assert [p.name for p in (tmp_path / "video").iterdir()] == ["settings.json"]
    cached = np.load(cache_path(tmp_path / "npy", "long"))
    fields = open_cached(tmp_path / "video", "long", video=path)
    assert isinstance(fields, VideoDiffFields) and len(fields) == len(cached) == 39
    np.testing.assert_array_equal(fields[np.arange(39)], cached)
    for _ in range(5):  # unsorted, repeated, sparse: as clips index them
        wanted = rng.integers(0, 39, 12)
        np.testing.assert_array_equal(fields[wanted], cached[wanted])
    with pytest.raises(IndexError, match="out of range"):
        fields[[39]]
    with pytest.raises(ValueError, match="pass `video`"):
        open_cached(tmp_path / "video", "long")


def test_format_video_replaces_a_stored_diff_cache_and_is_for_diff_only(videos, tmp_path):
    build_cache(videos, tmp_path, "diff", workers=1, show_progress=False)
    report = build_cache(videos, tmp_path, "diff", fmt="video", show_progress=False)
    assert report.invalidated == 3 and not list(tmp_path.glob("*.npy"))
    assert json.loads((tmp_path / "settings.json").read_text())["format"] == "video"
    with pytest.raises(ValueError, match="differences only"):
        build_cache(videos, tmp_path / "flow", "flow", fmt="video", show_progress=False)


@pytest.mark.slow
def test_changing_the_bound_invalidates_and_rebuilds(videos, tmp_path):
    build_cache(videos, tmp_path, "flow", algorithm="dis", bound=20, show_progress=False)
    old = np.load(cache_path(tmp_path, "v0"))
    report = build_cache(videos, tmp_path, "flow", algorithm="dis", bound=5, show_progress=False)
    assert (report.invalidated, report.built, report.skipped_existing) == (3, 3, 0)
    assert json.loads((tmp_path / "settings.json").read_text())["bound"] == 5.0
    new = np.load(cache_path(tmp_path, "v0"))
    assert not np.array_equal(old, new)  # a smaller bound spreads the same flow wider


def test_corrupt_video_is_reported_and_the_others_are_built(videos, tmp_path):
    bad = tmp_path / "bad.webm"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    records = [*videos, VideoRecord("bad", bad, (0,))]
    out = tmp_path / "cache"
    report = build_cache(records, out, "flow", algorithm="dis", workers=2, show_progress=False)
    assert report.built == 3
    assert [video_id for video_id, _ in report.broken] == ["bad"]
    assert "bad.webm" in report.broken[0][1]
    assert not cache_path(out, "bad").exists()


@pytest.mark.slow
def test_parallel_build_is_byte_identical(videos, tmp_path):
    for workers in (1, 2):
        build_cache(
            videos, tmp_path / str(workers), "flow", workers=workers, show_progress=False
        )  # tvl1, the default
    for record in videos:
        one = cache_path(tmp_path / "1", record.id).read_bytes()
        assert one == cache_path(tmp_path / "2", record.id).read_bytes()


def test_rerun_after_an_interrupted_build_completes_the_cache(videos, tmp_path):
    build_cache(videos, tmp_path, "diff", show_progress=False)
    # A killed build: one video never finished, its temp file (mml.fsio naming) is left over.
    cache_path(tmp_path, "v2").unlink()
    stray = tmp_path / ".v2.npy.abc123.tmp"
    stray.write_bytes(b"half a file")
    report = build_cache(videos, tmp_path, "diff", show_progress=False)
    assert (report.built, report.skipped_existing, report.invalidated) == (1, 2, 0)
    assert np.load(cache_path(tmp_path, "v2")).shape == (FRAMES - 1, SIZE, SIZE, 3)
    assert not stray.exists()


def test_unknown_settings_are_refused_before_touching_the_directory(videos, tmp_path):
    with pytest.raises(ValueError, match="algorithm"):
        build_cache(videos, tmp_path / "c", "flow", algorithm="nope", show_progress=False)
    with pytest.raises(ValueError, match="kind"):
        build_cache(videos, tmp_path / "c", "depth", show_progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()


def test_cache_path_is_named_by_video_id(tmp_path: Path):
    assert cache_path(tmp_path, "12345") == tmp_path / "12345.npy"


def test_shards_partition_the_videos_deterministically():
    ids = [f"video-{i}" for i in range(1000)]
    shards = [Shard.parse(f"{k}/4") for k in range(4)]
    parts = [{v for v in ids if s.holds(v)} for s in shards]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    assert all(200 <= len(p) <= 300 for p in parts)  # balanced by the hash
    # a video's shard depends on its id only: adding videos moves no other video
    assert [Shard(1, 4).holds(v) for v in ids[:50]] == [v in parts[1] for v in ids[:50]]
    assert str(Shard.parse(" 3 / 8 ")) == "3/8"


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_refused_with_the_expected_form(text):
    with pytest.raises(ConfigError, match="0 <= K < N"):
        Shard.parse(text)


@pytest.mark.slow
def test_shards_build_one_cache_byte_identical_to_a_single_build(videos, tmp_path):
    many = videos + [
        VideoRecord(f"w{i}", videos[i % 3].path, (0,)) for i in range(5)
    ]  # 8 ids over 3 files: both shards get some
    single = build_cache(many, tmp_path / "one", "flow", workers=1, show_progress=False)
    assert single.built == len(many)
    stray = tmp_path / "sharded" / ".v0.npy.other1.tmp"  # another shard's write in progress
    stray.parent.mkdir()
    stray.write_bytes(b"half a file")
    built = 0
    for k in range(2):
        report = build_cache(
            many, tmp_path / "sharded", "flow", workers=1, show_progress=False, shard=Shard(k, 2)
        )
        built += report.built
        mine = {r.id for r in many if Shard(k, 2).holds(r.id)}
        assert report.built == len(mine) > 0
        v0_built = any(Shard(j, 2).holds("v0") for j in range(k + 1))
        assert stray.exists() == (not v0_built)  # only v0's shard removes v0's temp file
    assert built == len(many)
    one, two = tmp_path / "one", tmp_path / "sharded"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for path in one.iterdir():
        assert path.read_bytes() == (two / path.name).read_bytes(), path.name


def test_a_shard_refuses_a_cache_of_other_settings_and_deletes_nothing(videos, tmp_path):
    build_cache(videos, tmp_path, "flow", bound=2.0, workers=1, show_progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="shard 0/2.*other settings.*clear the directory"):
        build_cache(videos, tmp_path, "flow", bound=4.0, show_progress=False, shard=Shard(0, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", ["flow", "diff"])
@pytest.mark.parametrize("max_error", [0, 4])
def test_jpeg_cache_is_within_its_stated_error_of_the_exact_cache(
    videos, tmp_path, kind, max_error
):
    exact, jpeg = tmp_path / "npy", tmp_path / "jpeg"
    build_cache(videos, exact, kind, algorithm="dis", workers=1, show_progress=False)
    report = build_cache(
        videos,
        jpeg,
        kind,
        algorithm="dis",
        fmt="jpeg",
        quality=90,
        max_error=max_error,
        workers=1,
        show_progress=False,
    )
    assert report.built == 3
    assert sorted(p.name for p in jpeg.glob("v*")) == ["v0.npz", "v1.npz", "v2.npz"]
    settings = json.loads((jpeg / "settings.json").read_text())
    assert (settings["format"], settings["max_error"]) == ("jpeg", max_error)
    for record in videos:
        want = np.asarray(open_cached(exact, record.id))
        got = open_cached(jpeg, record.id)  # the format comes from settings.json
        assert len(got) == len(want)
        picked = np.array([5, 0, 6, 5])  # unsorted and repeated
        fields = got[picked]
        assert fields.shape == (4, *want.shape[1:]) and fields.dtype == np.uint8
        error = np.abs(fields.astype(int) - want[picked]).max()
        assert error <= max_error
        if max_error == 0:  # every chunk stored losslessly
            np.testing.assert_array_equal(got[np.arange(len(got))], want)


def test_jpeg_chunks_and_row_padding_round_trip(tmp_path):
    from mml.data.cache import CHUNK, JpegFields, encode_jpeg_fields, write_npz

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (2 * CHUNK + 3, 13, 20, 2), dtype=np.uint8)  # 13: not 8k rows
    members = encode_jpeg_fields(array, quality=95, max_error=0)
    assert {k for k in members if k != "shape"} == {f"c{c}_{k}" for c in range(3) for k in (0, 1)}
    path = Path(tmp_path) / "x.npz"
    write_npz(path, members)
    fields = JpegFields(path)
    every = np.arange(len(array))
    np.testing.assert_array_equal(fields[every[::-1]], array[::-1])
    with pytest.raises(IndexError):
        fields[[len(array)]]


def test_switching_format_rebuilds_and_a_broken_jpeg_file_is_skipped(videos, tmp_path):
    from mml.config import ClipConfig
    from mml.data.annotations import Annotations
    from mml.data.dataset import VideoClips

    build_cache(videos, tmp_path, "flow", algorithm="dis", show_progress=False)
    report = build_cache(videos, tmp_path, "flow", algorithm="dis", fmt="jpeg", show_progress=False)
    assert (report.invalidated, report.built) == (3, 3)
    assert not list(tmp_path.glob("*.npy"))
    cache_path(tmp_path, "v1").write_bytes(b"PK\x03\x04 half a zip")  # a damaged file
    ann = Annotations(("a",), tuple(videos), False)
    clips = VideoClips(
        ann,
        ClipConfig(segments=2, scale_size=32, crop_size=32),
        train=True,
        modalities=("flow",),
        caches={"flow": tmp_path},
    )
    assert clips[0]["flow"].shape == (2, 10, 32, 32)
    assert "broken" in clips[1] and "v1.npz" in clips[1]["broken"]
