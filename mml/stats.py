"""Paired differences with bootstrap confidence intervals, and verdicts on orderings.

Two models evaluated on the same validation videos, in one or several runs (seeds), are
compared video by video: their difference is resampled with a two-level bootstrap — runs with
replacement, then videos with replacement, the same videos for both models and for every run
(all runs share the validation split) — and the 95% interval is the 2.5th and 97.5th
percentiles of the resampled mean differences. With one run only videos are resampled.

The metric is a function of one run's values and the indices of the resampled videos, so
single-label accuracy (values: 0/1 correctness) and multi-label mAP (values: scores, recomputed
on each resample) use the same bootstrap. The caller passes a seeded `numpy.random.Generator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mml.metrics import mean_average_precision

Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""metric(values, videos): for each run (row of `values`), the metric in points (0-100) on
the videos `videos` (indices into axis 1, repeats allowed)."""


def accuracy(correct: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Per run, the percentage of right answers: `correct` is (runs, videos) of 0/1."""
    return 100.0 * correct[:, videos].mean(axis=1)


def mean_ap(targets: np.ndarray) -> Metric:
    """Per run, mAP of scores (runs, videos, classes) against `targets` (videos, classes)."""

    def metric(scores: np.ndarray, videos: np.ndarray) -> np.ndarray:
        return np.array([mean_average_precision(s[videos], targets[videos]) for s in scores])

    return metric


@dataclass(frozen=True)
class PairedDifference:
    """Mean over runs of metric(A) - metric(B), in points, with its 95% bootstrap interval."""

    diff: float
    low: float
    high: float
    runs: int
    videos: int


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    rng: np.random.Generator,
    n_boot: int = 2000,
    metric: Metric = accuracy,
) -> PairedDifference:
    """The difference A - B of `metric` and its 95% percentile interval.

    `a` and `b` hold per-run, per-video values of model A and control B, aligned (row r: run
    r; column v: video v, the same video for A and B in every run): shape (runs, videos) of
    0/1 correctness for `accuracy`, (runs, videos, classes) of scores for `mean_ap(targets)`.
    """
    if a.shape != b.shape or a.ndim < 2 or a.shape[1] == 0:
        raise ValueError(
            f"a and b must be (runs, videos, ...) of one shape, got {a.shape}, {b.shape}"
        )
    runs, videos = a.shape[:2]
    every = np.arange(videos)
    diff = float(np.mean(metric(a, every) - metric(b, every)))
    samples = np.empty(n_boot)
    for i in range(n_boot):
        picked = rng.integers(0, runs, runs) if runs > 1 else np.zeros(1, dtype=np.int64)
        resampled = rng.integers(0, videos, videos)
        samples[i] = np.mean(metric(a[picked], resampled) - metric(b[picked], resampled))
    low, high = np.percentile(samples, [2.5, 97.5])
    return PairedDifference(diff, float(low), float(high), runs, videos)


def verdict(ci: PairedDifference, *, margin: float = 0.0) -> str:
    """Whether "A - B > margin" holds at 95%: "holds", "does not hold" or "inconclusive".

    "A > B" is margin 0; "A within 2 points of B" (not worse by more than 2) is margin -2.
    """
    if ci.low > margin:
        return "holds"
    if ci.high < margin:
        return "does not hold"
    return "inconclusive"
