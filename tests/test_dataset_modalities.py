"""Multi-modal clips: aligned positions, stacked cached fields, channel order, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from videos import decode_index_pattern, index_pattern_frames

from mml.config import ClipConfig
from mml.data.annotations import Annotations, VideoRecord
from mml.data.cache import build_cache
from mml.data.dataset import VideoClips, to_input
from mml.data.sampling import ViewPlan
from mml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mml.data.video import write_video


def make_video(tmp_path, frames: int):
    video_dir, flow_dir, diff_dir = (tmp_path / d for d in ("videos", "flow", "diff"))
    for d in (video_dir, flow_dir, diff_dir):
        d.mkdir(parents=True)
    write_video(video_dir / "v.webm", index_pattern_frames(frames, 32, 32), fps=12)
    steps = np.arange(frames - 1, dtype=np.uint8)[:, None, None, None]
    flow = np.broadcast_to(10 * steps + np.array([0, 5], np.uint8), (frames - 1, 32, 32, 2))
    diff = np.broadcast_to(10 * steps + np.arange(3, dtype=np.uint8), (frames - 1, 32, 32, 3))
    np.save(flow_dir / "v.npy", np.ascontiguousarray(flow))
    np.save(diff_dir / "v.npy", np.ascontiguousarray(diff))
    ann = Annotations(("a",), (VideoRecord("v", video_dir / "v.webm", (0,)),), False)
    return ann, {"flow": flow_dir, "diff": diff_dir}


def clip_config(segments: int) -> ClipConfig:
    return ClipConfig(segments=segments, scale_size=32, crop_size=32)  # full frame, no resize


def rgb_indices(x: torch.Tensor) -> list[int]:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    frames = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [decode_index_pattern(f) for f in frames]


def test_modalities_see_the_same_moments_with_stacked_channels(tmp_path):
    ann, caches = make_video(tmp_path, frames=12)
    ds = VideoClips(
        ann,
        clip_config(2),
        train=False,
        views=ViewPlan(0, 1),
        modalities=("diff", "flow", "rgb"),
        caches=caches,
    )
    sample = ds[0]
    # 12 frames: 11 fields, stacks of 5 -> 7 positions; uniform centres of 2 segments: 1, 5.
    # RGB reads the centre of each position's 6-frame window, p + 2 -> frames 3, 7.
    assert rgb_indices(sample["rgb"][0]) == [3, 7]
    flow = sample["flow"][0]  # (V=1) -> (T=2, 10, 32, 32)
    assert flow.shape == (2, 10, 32, 32)
    raw = (flow[:, :, 0, 0] * 0.226 + 0.5) * 255
    expected = [[10 * (p + j) + c for j in range(5) for c in (0, 5)] for p in (1, 5)]
    assert torch.allclose(raw, torch.tensor(expected, dtype=torch.float32), atol=1e-3)
    diff = sample["diff"][0]
    assert diff.shape == (2, 15, 32, 32)
    q = (diff[:, :, 0, 0] + 1) / 2 * 255
    expected = [[10 * (p + j) + c for j in range(5) for c in range(3)] for p in (1, 5)]
    assert torch.allclose(q, torch.tensor(expected, dtype=torch.float32), atol=1e-3)


def rgb_training_frames(tmp_path, frames: int, modalities: tuple[str, ...]) -> list[list[int]]:
    """The RGB frames (decoded from the real video) of 60 epochs of training clips."""
    ann, caches = make_video(tmp_path / "-".join(modalities), frames=frames)
    ds = VideoClips(
        ann,
        ClipConfig(segments=4, scale_size=32, crop_size=32, max_distort=0, scales=(1.0,)),
        train=True,
        modalities=modalities,
        caches=caches,
    )
    seen = []
    for epoch in range(60):
        ds.set_epoch(epoch)
        seen.append(rgb_indices(ds[0]["rgb"]))
    return seen


@pytest.mark.slow
def test_rgb_training_clips_do_not_depend_on_peers_and_match_test_positions(tmp_path):
    """Issue 13: an RGB model trains on the same temporal statistics in a CE stage (RGB alone)
    and in an MML stage with flow and diff, on short and long videos, and those are the
    positions it is tested on."""
    for frames in (12, 24, 48):  # shorter than the dense span (25 frames at T=4), and longer
        alone = rgb_training_frames(tmp_path / str(frames), frames, ("rgb",))
        with_peers = rgb_training_frames(tmp_path / str(frames), frames, ("rgb", "flow", "diff"))
        assert alone == with_peers
        counts = np.bincount(np.ravel(alone), minlength=frames)
        assert counts[:2].sum() == 0 and counts[frames - 3 :].sum() == 0  # windows' centres
        assert all(np.diff(clip).min() >= 0 for clip in alone)  # in order, never wrapped
        ann, caches = make_video(tmp_path / str(frames) / "test", frames=frames)
        test = VideoClips(
            ann,
            clip_config(4),
            train=False,
            views=ViewPlan(1, 2),
            modalities=("rgb", "flow"),
            caches=caches,
        )[0]
        tested = {i for view in test["rgb"] for i in rgb_indices(view)}
        assert tested <= set(range(2, frames - 3))  # the same positions as in training


def test_short_video_stack_repeats_the_last_field(tmp_path):
    ann, caches = make_video(tmp_path, frames=4)  # 3 fields: fewer than a stack
    ds = VideoClips(
        ann, clip_config(2), train=False, views=ViewPlan(0, 1), modalities=("flow",), caches=caches
    )
    raw = (ds[0]["flow"][0][:, 0::2, 0, 0] * 0.226 + 0.5) * 255
    assert raw.round().tolist() == [[0, 10, 20, 20, 20]] * 2


def test_training_clips_share_crop_and_offsets(tmp_path):
    ann, caches = make_video(tmp_path, frames=20)
    ds = VideoClips(
        ann,
        ClipConfig(segments=4, scale_size=32, crop_size=24),
        train=True,
        modalities=("flow", "rgb"),
        caches=caches,
    )
    for epoch in range(5):
        ds.set_epoch(epoch)
        sample = ds[0]
        assert sample["rgb"].shape == (4, 3, 24, 24) and sample["flow"].shape == (4, 10, 24, 24)
    ds.set_epoch(3)
    assert torch.equal(ds[0]["flow"], ds[0]["flow"])  # same (seed, epoch, index), same clip


def test_missing_cache_skips_the_video(tmp_path):
    ann, caches = make_video(tmp_path, frames=12)
    (caches["flow"] / "v.npy").unlink()
    ds = VideoClips(ann, clip_config(2), train=False, modalities=("flow",), caches=caches)
    sample = ds[0]
    assert "broken" in sample and "mml data flow" in sample["broken"]


def test_flip_negates_flow_x_only():
    x = torch.full((1, 10, 2, 2), 0.8)
    out = to_input("flow", x.clone(), flipped=True) * 0.226 + 0.5
    assert torch.allclose(out[:, 0::2], torch.tensor(0.2)) and torch.allclose(
        out[:, 1::2], torch.tensor(0.8)
    )


def test_the_loader_probes_each_video_once_before_forking_its_workers(tmp_path, monkeypatch):
    from mml.config import LoaderConfig
    from mml.data import video
    from mml.data.dataset import make_loader

    ann, caches = make_video(tmp_path, frames=12)
    broken = tmp_path / "videos" / "broken.webm"
    broken.write_bytes(b"not a video")
    ann = Annotations(ann.classes, (*ann.records, VideoRecord("broken", broken, (0,))), False)
    ds = VideoClips(ann, clip_config(2), train=True, modalities=("flow",), caches=caches)
    video._PROBES.clear()
    loader = LoaderConfig(batch_size=2, workers=1)
    first = list(make_loader(ds, loader, shuffle=False, seed=0, epoch=0))
    assert first[0].ids == ["v"] and first[0].skipped == ["broken"]
    assert len(video._PROBES) == 1  # probed here, in this process (not the broken file)

    def demux(path):  # from now on, demuxing a file fails
        raise video.VideoDecodeError(path, "demuxed again")

    monkeypatch.setattr(video, "_probe", demux)
    for epoch in (1, 2):  # new workers each epoch, forked with the memo: no demuxing
        batch = next(iter(make_loader(ds, loader, shuffle=False, seed=0, epoch=epoch)))
        assert batch.ids == ["v"] and batch.skipped == ["broken"]


def test_validation_batches_are_decoded_once_and_replayed(tmp_path, monkeypatch):
    from mml.config import LoaderConfig
    from mml.data import dataset
    from mml.inference import predict_dataset, val_batches

    ann, caches = make_video(tmp_path, frames=12)
    broken = tmp_path / "videos" / "broken.webm"
    broken.write_bytes(b"not a video")
    ann = Annotations(ann.classes, (*ann.records, VideoRecord("broken", broken, (0,))), False)
    ds = VideoClips(ann, clip_config(2), train=False, views=ViewPlan(1, 1), modalities=("rgb",))
    loader = LoaderConfig(batch_size=1, workers=0)
    reads = []
    real_read = dataset.read_frames
    monkeypatch.setattr(dataset, "read_frames", lambda *a: reads.append(a) or real_read(*a))
    model = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.LazyLinear(3))
    kept = val_batches(ds, loader, 1, 0, 1, budget=1 << 20)
    first = predict_dataset(
        [model], ["rgb"], ds, loader, batch_size=1, fuse="logits", show_progress=False, batches=kept
    )
    decoded = len(reads)
    again = predict_dataset(
        [model], ["rgb"], ds, loader, batch_size=1, fuse="logits", show_progress=False, batches=kept
    )
    fresh = predict_dataset(
        [model], ["rgb"], ds, loader, batch_size=1, fuse="logits", show_progress=False
    )
    assert decoded == 1 and len(reads) == decoded + 1  # the replay decoded nothing, fresh did
    for other in (again, fresh):
        assert other.skipped == first.skipped == ["broken"]
        assert other.members[0].ids == first.members[0].ids == ["v"]
        np.testing.assert_array_equal(other.members[0].scores, first.members[0].scores)


def test_batches_over_the_budget_or_from_an_unfinished_pass_are_not_kept():
    from mml.data.dataset import Batch, KeptBatches

    made = []

    def make():
        made.append(1)
        return [Batch({"rgb": torch.zeros(4, 8)}, torch.zeros(4), ["a"], []) for _ in range(3)]

    small = KeptBatches(make, budget=3 * (4 * 8 * 4 + 4 * 4) - 1)  # one byte short of 3 batches
    for _ in range(3):
        assert len(list(small)) == 3
    assert len(made) == 4  # len() once, then every pass decodes again
    made.clear()
    kept = KeptBatches(make, budget=1 << 20)
    next(iter(kept))  # a pass abandoned after one batch
    assert len(list(kept)) == 3 and len(list(kept)) == 3
    assert len(made) == 2  # the abandoned pass and the first complete one


def test_diff_clips_read_from_the_video_equal_those_of_a_stored_cache(tmp_path):
    ann, caches = make_video(tmp_path, frames=40)
    video_caches = {"diff": tmp_path / "diff-video"}
    records = list(ann.records)
    build_cache(records, caches["diff"], "diff", workers=1, show_progress=False)  # real diffs
    build_cache(records, video_caches["diff"], "diff", fmt="video", show_progress=False)
    config = ClipConfig(segments=4, scale_size=32, crop_size=24)
    for train, views in ((True, ViewPlan(1, 2)), (False, ViewPlan(1, 2))):
        stored, computed = (
            VideoClips(ann, config, train=train, views=views, modalities=("diff", "rgb"), caches=c)
            for c in (caches, video_caches)
        )
        for epoch in range(3):
            stored.set_epoch(epoch)
            computed.set_epoch(epoch)
            a, b = stored[0], computed[0]
            assert torch.equal(a["diff"], b["diff"]) and torch.equal(a["rgb"], b["rgb"])
