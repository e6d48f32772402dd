"""mml/seeds.py is the one place random streams come from, and it keeps the recorded streams."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from mml import seeds

PACKAGE = Path(__file__).resolve().parents[1] / "mml"
SEEDING = re.compile(r"(manual_seed|default_rng|SeedSequence|RandomState)\(|TPESampler\(\s*seed")


def test_streams_are_the_ones_runs_recorded_before_seeds_had_one_home():
    # the arithmetic of the earlier inline code, so a seed gives the numbers it gave before
    assert seeds.model_init(3, 2) == 3002
    assert seeds.dropout(2, 5, rank=1, world_size=4) == (2 * 7919 + 5) * 4 + 1
    assert seeds.trial_sampler(4, 7) == 4 * 1_000_003 + 7
    order = torch.randperm(50, generator=seeds.epoch_order(1, 2))
    assert torch.equal(
        order, torch.randperm(50, generator=torch.Generator().manual_seed(1_000_005))
    )
    assert seeds.clip(0, 3, 9).integers(1 << 30) == np.random.default_rng([0, 3, 9]).integers(
        1 << 30
    )


def test_distinct_coordinates_give_distinct_streams():
    inits = {seeds.model_init(seed, k) for seed in range(20) for k in range(8)}
    assert len(inits) == 20 * 8
    drops = {seeds.dropout(s, e, r, 4) for s in range(5) for e in range(100) for r in range(4)}
    assert len(drops) == 5 * 100 * 4


def test_no_module_seeds_a_generator_on_its_own():
    """Every generator in the package is seeded through mml.seeds (the synthetic datasets
    derive theirs from synth.seed with SeedSequence, in their own modules)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "seeds.py" or "synth" in path.relative_to(PACKAGE).as_posix():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("#") or not SEEDING.search(line):
                continue
            if "seeds." not in line and "TPESampler(seed=s)" not in line:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
