"""Paired bootstrap differences and verdicts (mml/stats.py), against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from mml.metrics import mean_average_precision
from mml.stats import PairedDifference, mean_ap, paired_bootstrap, verdict


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def right_on(videos: int, *right: range) -> np.ndarray:
    """One run's correctness: 1 on the videos of the given ranges."""
    row = np.zeros(videos)
    for r in right:
        row[list(r)] = 1
    return row


def test_identical_models_differ_by_zero_and_the_interval_holds_zero():
    correct = np.stack([right_on(100, range(0, 60)), right_on(100, range(30, 85))])
    ci = paired_bootstrap(correct, correct.copy(), rng=rng())
    assert (ci.diff, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert (ci.runs, ci.videos) == (2, 100)
    assert verdict(ci) == "inconclusive"


def test_always_right_against_always_wrong_is_100_points_exactly():
    ci = paired_bootstrap(np.ones((3, 50)), np.zeros((3, 50)), rng=rng())
    assert (ci.diff, ci.low, ci.high) == (100.0, 100.0, 100.0)
    assert verdict(ci) == "holds"
    assert verdict(paired_bootstrap(np.zeros((1, 50)), np.ones((1, 50)), rng=rng())) == (
        "does not hold"
    )


def test_one_run_matches_the_normal_approximation():
    # 300 videos; A right on 180, B on 120 of the same (A wins on 60, never loses): the
    # per-video difference d is 1 on 60 videos, 0 elsewhere. mean 0.2; the bootstrap sd of
    # the mean is sqrt(0.2 * 0.8 / 300) = 2.309 points: 95% CI ~ 20 +- 1.96 * 2.309.
    a = right_on(300, range(0, 180))[None]
    b = right_on(300, range(0, 120))[None]
    ci = paired_bootstrap(a, b, rng=rng(), n_boot=4000)
    assert ci.diff == pytest.approx(20.0)
    half = 1.96 * np.sqrt(0.2 * 0.8 / 300) * 100
    assert ci.low == pytest.approx(20 - half, abs=0.7)
    assert ci.high == pytest.approx(20 + half, abs=0.7)


def test_pairing_uses_the_same_videos_for_both_models():
    # A and B both right on 150 of 300 videos, but not the same ones: unpaired, the two
    # accuracies would be independent; paired, d = +1 on 75, -1 on 75: sd = 1/sqrt(300).
    a = right_on(300, range(0, 150))[None]
    b = right_on(300, range(75, 225))[None]
    ci = paired_bootstrap(a, b, rng=rng(), n_boot=4000)
    half = 1.96 * np.sqrt(0.5 / 300) * 100  # var(d) = 150/300 * 1
    assert ci.diff == 0.0
    assert (ci.high - ci.low) / 2 == pytest.approx(half, abs=0.6)


def test_same_seed_same_interval_other_seed_other_interval():
    a = right_on(200, range(0, 130))[None]
    b = right_on(200, range(20, 140))[None]
    first, again = (paired_bootstrap(a, b, rng=rng(7)) for _ in range(2))
    assert first == again
    assert paired_bootstrap(a, b, rng=rng(8)) != first


def test_more_runs_that_agree_give_a_narrower_interval():
    # Each run: A wins on its own 60 of 300 videos (20 points). Averaged over four runs the
    # per-video differences are even (0.25 on 240 videos), so resampling videos moves less.
    runs = [right_on(300, range(60 * i, 60 * i + 60)) for i in range(4)]
    a, b = np.stack(runs), np.zeros((4, 300))
    one = paired_bootstrap(a[:1], b[:1], rng=rng())
    four = paired_bootstrap(a, b, rng=rng())
    assert one.diff == four.diff == pytest.approx(20.0)
    assert four.runs == 4
    assert four.high - four.low < 0.6 * (one.high - one.low)


def test_runs_that_disagree_widen_the_interval():
    # A wins by 30 points in one run and by 0 in the other: resampling runs shows it.
    a = np.stack([right_on(100, range(0, 30)), right_on(100, range(0, 30))])
    b = np.stack([np.zeros(100), right_on(100, range(0, 30))])
    ci = paired_bootstrap(a, b, rng=rng())
    assert ci.diff == pytest.approx(15.0)
    assert ci.low <= 0.0 + 1e-9 and ci.high >= 30.0 - 1e-9


def test_multilabel_difference_is_the_map_difference():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    perfect = targets + 0.1 * np.arange(6)[:, None] / 6  # ranks every positive first
    noisy = np.random.default_rng(3).random((6, 2))
    ci = paired_bootstrap(
        perfect[None], noisy[None], rng=rng(), n_boot=200, metric=mean_ap(targets)
    )
    expected = mean_average_precision(perfect, targets) - mean_average_precision(noisy, targets)
    assert ci.diff == pytest.approx(expected)
    assert ci.low <= ci.diff <= ci.high and ci.high <= 100


@pytest.mark.parametrize(
    ("low", "high", "margin", "expected"),
    [
        (0.1, 3.0, 0.0, "holds"),
        (0.0, 3.0, 0.0, "inconclusive"),  # the interval touches the margin: not shown
        (-3.0, -0.1, 0.0, "does not hold"),
        (-3.0, 0.0, 0.0, "inconclusive"),
        (-1.9, 1.0, -2.0, "holds"),  # within 2 points: never worse by 2 or more
        (-2.0, 1.0, -2.0, "inconclusive"),
        (-5.0, -2.1, -2.0, "does not hold"),
    ],
)
def test_verdict_boundaries(low, high, margin, expected):
    ci = PairedDifference((low + high) / 2, low, high, runs=1, videos=100)
    assert verdict(ci, margin=margin) == expected


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.ones((2, 10)), np.ones((1, 10)), rng=rng())
