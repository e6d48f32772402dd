"""The paper's orderings, declared once, and their paired test over the runs of a report.

Each `Comparison` says that model A beats its control B (or is within 2 points of it) on the
validation set, as a table of the paper found. A model is a ref '<stage>.<k>', a tuple of refs
(their ensemble: probabilities averaged, as `mml ensemble` does) or `BEST_PAIR`: in each run,
the best two-model ensemble with distinct modalities among `ensemble.candidates` (empty: every
evaluated model) other than the comparison's model A — chosen on the same validation videos,
which favours the ensemble.

`compare` pairs A and B video by video in every run that has both, and bootstraps runs and
videos (mml/stats.py) for the difference A - B and its 95% interval. A comparison whose models
no run has is "not run".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mml import seeds
from mml.artifacts import Predictions
from mml.config import ConfigError
from mml.ensemble import average, score_combinations
from mml.runs import Run
from mml.stats import Metric, accuracy, mean_ap, paired_bootstrap, verdict

BEST_PAIR = "best pair ensemble"
WITHIN_2 = "within 2 points"
MARGINS = {"greater": 0.0, WITHIN_2: -2.0}  # A - B must exceed this
BOOTSTRAP_SAMPLES = 2000

Model = str | tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    """The claim "A > B" (kind "greater") or "A >= B - 2 points" (kind "within 2 points")."""

    name: str
    table: str  # where the paper shows it
    a: Model
    b: Model  # the control
    kind: Literal["greater", "within 2 points"] = "greater"


CE_ENSEMBLE = ("rgb_ce_re.0", "flow_ce_rgb.0", "diff_ce_rgb.0")
ML_ENSEMBLE = ("ens_rgb.0", "ens_flow.0", "ens_diff.0")

# The default pipeline's stages (params.yaml); "+6" = 6 more epochs from the named init.
COMPARISONS: tuple[Comparison, ...] = (
    Comparison("Flow: from RGB > from ImageNet", "Tab. 1", "flow_ce_rgb.0", "flow_ce_scratch.0"),
    Comparison("Diff: from RGB > from ImageNet", "Tab. 1", "diff_ce_rgb.0", "diff_ce_scratch.0"),
    Comparison("ML > CE (rgb_ce.0 +6)", "Tab. 5", "rgb_ml.0", "rgb_ce_re.0"),
    Comparison("MML > CE (rgb_ml.0 +6)", "Tabs. 3, 7", "mml.0", "rgb_ml_re.0"),
    Comparison("MML RGB+Flow > CE (rgb_ce.0 +6)", "Tabs. 3, 7", "mml_rf.0", "rgb_ce_re.0"),
    Comparison("MML RGB+Flow+Diff > CE (rgb_ce.0 +6)", "Tabs. 3, 7", "mml_rfd.0", "rgb_ce_re.0"),
    Comparison("MML > ML (rgb_ce.0 +6)", "Tabs. 3, 7", "mml_rfd.0", "rgb_ml.0"),
    Comparison("the KL term: MML > same loader, no KL", "ablation", "mml_rfd.0", "mml_rfd_kl0.0"),
    Comparison("MML > MARS", "Tab. 2", "mml_rf.0", "mars.0"),
    Comparison("MML > D3D", "Tab. 2", "mml_rf.0", "d3d.0"),
    Comparison("MML within 2 points of best pair", "Fig. 3, Tab. 11", "mml.0", BEST_PAIR, WITHIN_2),
    Comparison("ML-trained > CE-trained ensemble", "Tabs. 11-13", ML_ENSEMBLE, CE_ENSEMBLE),
)


@dataclass(frozen=True)
class CurveFigure:
    """Validation curves of models the paper compares, one panel per group of refs; the first
    ref of a panel is the subject, the others its controls. Refs a pipeline lacks are left out
    (the SSv2 pipeline starts from ImageNet where the default starts from scratch)."""

    name: str  # the file: figures/<name>.png in the report run
    title: str
    table: str
    panels: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def refs(self) -> list[str]:
        """Every model ref the figure draws, panel by panel."""
        return [ref for _, group in self.panels for ref in group]


CURVES: tuple[CurveFigure, ...] = (
    CurveFigure(
        "init",
        "Flow and Diff initialised from the RGB model vs from ImageNet (the default: its stand-in)",
        "Tab. 1",
        (
            ("Flow", ("flow_ce_rgb.0", "flow_ce_scratch.0", "flow_ce_imagenet.0")),
            ("Diff", ("diff_ce_rgb.0", "diff_ce_scratch.0", "diff_ce_imagenet.0")),
        ),
    ),
    CurveFigure(
        "methods",
        "The RGB model, 6 epochs from rgb_ce.0: CE vs ML vs MML vs MARS vs D3D",
        "Tabs. 2, 3, 5",
        (("RGB", ("mml_rfd.0", "mml_rf.0", "rgb_ml.0", "rgb_ce_re.0", "mars.0", "d3d.0")),),
    ),
)


def refs(model: Model) -> list[str]:
    """The model refs that `model` names (none for BEST_PAIR, chosen per run)."""
    if model == BEST_PAIR:
        return []
    return [model] if isinstance(model, str) else list(model)


def describe(model: Model) -> str:
    return model if isinstance(model, str) else " + ".join(model)


def resolve(model: Model, run: Run, candidates: Sequence[str]) -> Predictions | None:
    """`model`'s validation predictions in `run` (an ensemble averaged), or None if missing."""
    if model == BEST_PAIR:
        return best_pair(run, candidates)
    members = [run.member(ref) for ref in refs(model)]
    if any(m is None for m in members):
        return None
    return members[0] if len(members) == 1 else average(members)


def best_pair(run: Run, candidates: Sequence[str]) -> Predictions | None:
    """The run's best two-model ensemble with distinct modalities (ties: the smaller refs)."""
    members = [m for m in map(run.member, candidates or run.refs()) if m is not None]
    if not members:
        return None
    key = members[0].metric
    pairs = score_combinations(members, (2,), True, members[0].multilabel)
    if not pairs:
        return None
    best = min(pairs, key=lambda r: (-r[key], r["members"]))
    return average([run.member(ref) for ref in best["members"]])


def align(pairs: list[tuple[Predictions, Predictions]]) -> tuple[np.ndarray, np.ndarray, Metric]:
    """Per run, A's and B's values on the videos that both predicted in every run (by id):
    0/1 correctness (single-label) or scores (multi-label), and the metric over them."""
    members = [m for pair in pairs for m in pair]
    ids = sorted(set(members[0].ids).intersection(*(m.ids for m in members[1:])))
    if not ids:
        raise ConfigError(f"{members[0].ref} and {members[1].ref}: no video in common")
    rows = [_rows(m, ids) for m in members]
    targets = members[0].targets[rows[0]]
    for m, r in zip(members, rows, strict=True):
        differ = np.flatnonzero((m.targets[r] != targets).reshape(len(ids), -1).any(axis=1))
        if differ.size:
            raise ConfigError(
                f"{m.ref} and {members[0].ref} disagree on the labels of video "
                f"{ids[differ[0]]}: are they runs of the same dataset?"
            )
    if members[0].multilabel:
        values, metric = [m.scores[r] for m, r in zip(members, rows, strict=True)], mean_ap(targets)
    else:
        values = [
            (m.scores[r].argmax(axis=1) == targets).astype(float)
            for m, r in zip(members, rows, strict=True)
        ]
        metric = accuracy
    return np.stack(values[0::2]), np.stack(values[1::2]), metric


def _rows(member: Predictions, ids: list[str]) -> np.ndarray:
    position = {video: row for row, video in enumerate(member.ids)}
    return np.array([position[video] for video in ids], dtype=np.int64)


def compare(
    c: Comparison,
    runs: list[Run],
    candidates: Sequence[str] = (),
    *,
    n_boot: int = BOOTSTRAP_SAMPLES,
) -> dict:
    """One row of the orderings table: values, paired difference, 95% CI and verdict."""
    row: dict = {
        "name": c.name,
        "table": c.table,
        "a": describe(c.a),
        "b": describe(c.b),
        "kind": c.kind,
    }
    pairs, used = [], []
    # A single model is compared with ensembles of *other* models: never a pair holding A itself
    others = [ref for ref in candidates if ref not in refs(c.a)]
    for run in runs:
        pool = others or [ref for ref in run.refs() if ref not in refs(c.a)]
        a, b = resolve(c.a, run, pool), resolve(c.b, run, pool)
        if a is not None and b is not None:
            pairs.append((a, b))
            used.append(run)
    if not pairs:
        missing = [r for r in refs(c.a) + refs(c.b) if all(run.member(r) is None for run in runs)]
        if BEST_PAIR in (c.a, c.b) and not missing:
            missing = [BEST_PAIR]
        return {**row, "verdict": "not run", "missing": missing}
    a, b, metric = align(pairs)
    ci = paired_bootstrap(
        a, b, rng=np.random.default_rng(seeds.BOOTSTRAP), n_boot=n_boot, metric=metric
    )
    every = np.arange(ci.videos)
    row |= {
        "metric": pairs[0][0].metric,
        "a_value": float(metric(a, every).mean()),
        "b_value": float(metric(b, every).mean()),
        "diff": ci.diff,
        "low": ci.low,
        "high": ci.high,
        "runs": [r.name for r in used],
        "videos": ci.videos,
        "verdict": verdict(ci, margin=MARGINS[c.kind]),
    }
    for side, model in (("a", c.a), ("b", c.b)):
        if model == BEST_PAIR:
            row[f"{side}_chosen"] = [pair[side == "b"].ref for pair in pairs]
    return row
