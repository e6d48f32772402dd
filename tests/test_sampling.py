"""Sampling plans against hand-computed indices (ARCHITECTURE §1, §5)."""

import numpy as np
import pytest

from mml.data.sampling import (
    ViewPlan,
    dense_indices,
    dense_test_starts,
    fit_stride,
    train_indices,
    uniform_indices,
    view_indices,
)


def test_uniform_test_views_are_segment_centres_and_starts():
    # 16 positions, 8 segments of 2: centres 1,3,..,15; half a segment earlier: 0,2,..,14
    assert uniform_indices(16, 8, train=False).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert uniform_indices(16, 8, train=False, shift=-0.5).tolist() == list(range(0, 16, 2))
    # 10 positions, 4 segments of 2.5: floor(1.25, 3.75, 6.25, 8.75)
    assert uniform_indices(10, 4, train=False).tolist() == [1, 3, 6, 8]


def test_uniform_train_draws_one_index_inside_each_segment():
    rng = np.random.default_rng(0)
    offsets = np.random.default_rng(0).random(4)
    expected = np.floor((np.arange(4) + offsets) * 2.5).astype(int)
    assert uniform_indices(10, 4, train=True, rng=rng).tolist() == expected.tolist()
    rng = np.random.default_rng(1)
    for _ in range(200):
        idx = uniform_indices(37, 8, train=True, rng=rng)
        seg = 37 / 8
        assert all(np.floor(k * seg) <= i < np.ceil((k + 1) * seg) for k, i in enumerate(idx))


def test_uniform_short_video_repeats_in_order():
    # 3 positions, 8 segments of 0.375: floor((k + .5) * .375)
    assert uniform_indices(3, 8, train=False).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    idx = uniform_indices(3, 8, train=True, rng=np.random.default_rng(0))
    assert (np.diff(idx) >= 0).all() and idx.max() <= 2


def test_dense_test_centre_and_explicit_start():
    # 40 positions, T=8, stride 4: span 29, starts 0..11, centre 5
    assert dense_indices(40, 8, 4, train=False).tolist() == [5, 9, 13, 17, 21, 25, 29, 33]
    assert dense_indices(40, 8, 4, train=False, start=11).tolist()[-1] == 39
    with pytest.raises(ValueError, match="outside"):
        dense_indices(40, 8, 4, train=False, start=12)


def test_dense_train_draws_every_start_including_the_last():
    rng = np.random.default_rng(0)
    starts = {int(dense_indices(40, 8, 4, train=True, rng=rng)[0]) for _ in range(500)}
    assert starts == set(range(12))  # the authors' code never drew 11


def test_dense_short_video_fits_its_stride_instead_of_wrapping():
    # 10 positions, T=8: stride 4 would span 29; the fitted stride (10 - 1) // 7 = 1 spans 8
    assert fit_stride(10, 8, 4) == 1
    assert dense_indices(10, 8, 4, train=False).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    # 15 positions, T=4, stride 8: (15 - 1) // 3 = 4, span 13, starts 0..2
    assert fit_stride(15, 4, 8) == 4 and fit_stride(40, 4, 8) == 8
    assert dense_indices(15, 4, 8, train=False).tolist() == [1, 5, 9, 13]
    # fewer positions than frames: start 0, the last position repeats, still in order
    assert dense_indices(5, 8, 4, train=False).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    rng = np.random.default_rng(0)
    for n in range(8, 40):
        idx = dense_indices(n, 8, 4, train=True, rng=rng)
        assert idx.max() < n and (np.diff(idx) > 0).all()  # never clamped when n >= T


def test_dense_test_starts_evenly_spaced():
    assert dense_test_starts(40, 8, 4, 1) == [5]
    assert dense_test_starts(40, 8, 4, 3) == [0, 6, 11]
    assert dense_test_starts(10, 8, 4, 2) == [0, 2]  # stride 1: starts 0..2


def test_view_indices_dense_then_uniform():
    views = view_indices(16, 4, 2, ViewPlan(dense=1, uniform=2))
    # dense: span 7, starts 0..9, centre 4 -> 4,6,8,10; uniform centres 2,6,10,14; starts 0,4,8,12
    assert views.tolist() == [[4, 6, 8, 10], [2, 6, 10, 14], [0, 4, 8, 12]]
    assert str(ViewPlan(1, 2)) == "Dense 1 + Uniform 2"


def test_mixed_sampling_uses_mix_probability():
    rng = np.random.default_rng(0)
    kinds = []
    for _ in range(400):
        idx = train_indices(64, 8, 2, sampling="mixed", mix=0.3, rng=rng)
        kinds.append(bool((np.diff(idx) == 2).all()))  # dense with stride 2
    dense_share = np.mean(kinds)
    assert 0.6 < dense_share < 0.8  # P(dense) = 0.7
    for mix, dense in ((1.0, 0.0), (0.0, 1.0)):
        share = np.mean(
            [
                bool(
                    (
                        np.diff(train_indices(64, 8, 2, sampling="mixed", mix=mix, rng=rng)) == 2
                    ).all()
                )
                for _ in range(50)
            ]
        )
        assert share <= 0.1 if dense == 0.0 else share == 1.0
    with pytest.raises(ValueError, match="unknown sampling"):
        train_indices(64, 8, 2, sampling="random", mix=0.5, rng=rng)


def test_same_seed_same_plan():
    a = [
        train_indices(50, 8, 4, sampling="mixed", mix=0.5, rng=np.random.default_rng(7))
        for _ in range(3)
    ]
    assert all((x == a[0]).all() for x in a)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        uniform_indices(0, 8, train=False)
    with pytest.raises(ValueError, match="rng"):
        uniform_indices(10, 8, train=True)


def test_one_time_base_for_every_modality():
    from mml.data.sampling import frame_indices, num_positions

    assert num_positions(30) == 25  # 29 fields, stacks of 5 start at 0..24; windows of 6 frames
    assert num_positions(4) == 1  # shorter than a window: one (repeating) position
    positions = np.array([0, 6, 24])
    assert frame_indices(positions, "rgb", 30).tolist() == [2, 8, 26]  # the window's centre
    assert frame_indices(positions, "flow", 30).tolist() == [0, 6, 24]  # a stack's first field
    assert frame_indices(np.array([0]), "rgb", 2).tolist() == [1]  # clamped to the last frame
    with pytest.raises(ValueError, match="modality"):
        frame_indices(positions, "depth", 30)
