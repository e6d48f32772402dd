"""Every random stream of training, tuning and loading, derived from a config seed here only.

Each function names one stream and maps the config's seed (`seed`, or `tune.seed`) and the
stream's coordinates (model, epoch, process, trial, clip) to the seed of its generator. The
arithmetic is what the runs recorded so far used, so a seed gives the same numbers as before
this module existed; distinct coordinates give distinct streams for any realistic range (fewer
than 1000 models per stage, fewer than 1,000,003 epochs or trials). The synthetic datasets
derive theirs from `synth.seed` with `numpy.random.SeedSequence` (mml/data/synth.py).
"""

from __future__ import annotations

import numpy as np
import torch


def model_init(seed: int, k: int) -> int:
    """Torch's global seed before model `k` of a stage is built (a "scratch" init differs per k)."""
    return seed * 1000 + k


def dropout(seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> int:
    """Torch's global seed at the start of `epoch` in process `rank` (dropout masks)."""
    return (seed * 7919 + epoch) * world_size + rank


def epoch_order(seed: int, epoch: int) -> torch.Generator:
    """The generator that shuffles `epoch`'s videos: the same in every process."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def clip(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Temporal sampling, crop and flip of video `index` in `epoch`, in whichever worker."""
    return np.random.default_rng([seed, epoch, index])


def trial_sampler(seed: int, trial: int) -> int:
    """The TPE sampler's seed for tuning trial `trial` (`tune.seed`)."""
    return seed * 1_000_003 + trial


def pretrain_model(seed: int) -> int:
    """Torch's global seed before `mml pretrain` builds its model (`pretrain.seed`)."""
    return seed


def pretrain_batches(seed: int) -> np.random.Generator:
    """`mml pretrain`'s shuffles and crops (its stills: mml.data.synth.stills.still_rng)."""
    return np.random.default_rng(seed)


BOOTSTRAP = 0  # the report's paired bootstrap: every comparison draws from this seed
