"""The Charades-like synthetic dataset: multi-label splits, deterministic, per-object motion."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from videos import synth_config

from mml.config import ConfigError, DatasetConfig
from mml.data.annotations import label_counts
from mml.data.dataset import load_split
from mml.data.synth import CLASS_TEMPLATES
from mml.data.synth.charades import (
    CLASSES_FILE,
    TRAIN_FILE,
    VAL_FILE,
    check_dataset_config,
    generate,
    plan_multilabel_video,
)
from mml.data.video import num_frames, probe

ACTIONS = (1, 3)
TINY = synth_config(
    multilabel=True,
    actions=ACTIONS,
    seed=5,
    train_per_class=2,
    val_per_class=1,
    frames=(6, 8),
    height=32,
    width=32,
    num_classes=5,
    distractors=1,
)
CHARADES = DatasetConfig(
    format="charades", labels=CLASSES_FILE, train=TRAIN_FILE, val=VAL_FILE, ext=".webm"
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("charades")
    generate(root, TINY)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_generate_writes_readable_balanced_multilabel_splits(tiny_root):
    expected_classes = tuple(
        t.replace("[", "").replace("]", "") for t in CLASS_TEMPLATES[: TINY.num_classes]
    )
    config = CHARADES.model_copy(update={"root": tiny_root})
    ids = set()
    for split, per_class in (("train", TINY.train_per_class), ("val", TINY.val_per_class)):
        ann = load_split(config, split)
        ids |= {r.id for r in ann.records}
        assert ann.multilabel and ann.classes == expected_classes
        assert len(ann.records) == TINY.num_classes * per_class
        for record in ann.records:
            assert ACTIONS[0] <= len(record.labels) <= ACTIONS[1]
            assert len(set(record.labels)) == len(record.labels)
            assert record.path.is_file()
        counts = label_counts(ann)
        assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # balanced per split
    assert len(ids) == TINY.num_classes * (TINY.train_per_class + TINY.val_per_class)


def test_rows_span_the_whole_video_and_match_the_files(tiny_root):
    with open(tiny_root / TRAIN_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        path = tiny_root / "videos" / f"{row['id']}.webm"
        frames = num_frames(path)
        assert TINY.frames[0] <= frames <= TINY.frames[1]
        assert float(row["length"]) == pytest.approx(frames / TINY.fps, abs=0.006)
        info = probe(path)
        assert (info.height, info.width) == (TINY.height, TINY.width)
        for action in row["actions"].split(";"):
            _, start, end = action.split()
            assert float(start) == 0.0 and float(end) == float(row["length"])


def test_output_does_not_depend_on_workers(tiny_root, tmp_path):
    generate(tmp_path, TINY, workers=2)
    assert _files(tmp_path) == _files(tiny_root)


def test_generate_is_incremental_and_redraws_on_a_new_spec(tmp_path):
    calls = []
    generate(tmp_path, TINY, progress=lambda done, total: calls.append(total))
    total = TINY.num_classes * (TINY.train_per_class + TINY.val_per_class)
    assert calls == [total] * total
    videos = sorted((tmp_path / "videos").iterdir())
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in videos}
    leftover = tmp_path / "videos" / ".3.webm.k1ll3d.tmp"  # a killed run's temp file
    leftover.write_bytes(b"partial")
    generate(tmp_path, TINY)
    assert {
        p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in videos
    } == before
    assert not leftover.exists()

    smaller = TINY.model_copy(update={"noise": TINY.noise + 5, "train_per_class": 1})
    generate(tmp_path, smaller)
    after = sorted((tmp_path / "videos").iterdir())
    assert len(after) == smaller.num_classes * 2  # stale videos of the larger spec are gone
    assert all(p.read_bytes() != before[p.name][2] for p in after)

    inodes = {p.name: p.stat().st_ino for p in after}  # a rewrite replaces the file
    generate(tmp_path, smaller.model_copy(update={"actions": (2, 2)}))  # part of the spec too
    assert all(p.stat().st_ino != inodes[p.name] for p in after)
    ann = load_split(CHARADES.model_copy(update={"root": tmp_path}), "train")
    assert all(len(r.labels) == 2 for r in ann.records)


MOTION = synth_config(num_classes=len(CLASS_TEMPLATES), distractors=2)


def _trend(values: np.ndarray) -> int:
    """+1 if `values` never falls and rises clearly, -1 for the opposite, 0 otherwise."""
    steps, span = np.diff(values), float(values[-1] - values[0])
    if np.all(steps >= -1e-4) and span > 0.1 * abs(values).max():
        return 1
    if np.all(steps <= 1e-4) and span < -0.1 * abs(values).max():
        return -1
    return 0


@pytest.mark.parametrize("seed", range(8))
def test_each_object_does_its_own_class_motion(seed):
    rng = np.random.default_rng(seed)
    # both directions of each family in one video: only the object's own track is reversed
    class_ids = [int(c) for c in rng.permutation(8)]
    plan = plan_multilabel_video(class_ids, rng, MOTION)
    assert plan.class_ids == tuple(class_ids) and len(set(plan.targets)) == len(class_ids)
    assert 8 <= len(plan.tracks) <= 8 + MOTION.distractors
    expected = {
        0: ("x", 1),
        1: ("x", -1),
        2: ("y", -1),
        3: ("y", 1),
        4: ("radius", 1),
        5: ("radius", -1),
        6: ("opacity", 1),
        7: ("opacity", -1),
    }
    for c, target in zip(plan.class_ids, plan.targets, strict=True):
        field, sign = expected[c]
        assert _trend(getattr(plan.tracks[target], field)) == sign, (c, field)
    fixed_size = [t for c, t in zip(class_ids, plan.targets, strict=True) if c not in (4, 5)]
    largest = max(float(plan.tracks[t].radius.max()) for t in fixed_size)
    assert largest <= 0.8 * 0.15 * MOTION.height  # motion.py's targets reach 15% of the side


@pytest.mark.parametrize("seed", range(4))
def test_push_inverse_is_mirrored_not_reversed(seed):
    rng = np.random.default_rng(seed)
    plan = plan_multilabel_video([8, 9], rng, MOTION)
    right, left = (plan.tracks[t].x for t in plan.targets)
    assert (right - right[0]).max() > 5 and (right - right[0]).min() > -1
    assert (left - left[0]).min() < -5 and (left - left[0]).max() < 1
    assert abs(right[-1] - right[0]) < 0.2 * abs(right - right[0]).max()  # it comes back


def test_plan_rejects_repeated_or_unknown_classes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="distinct"):
        plan_multilabel_video([1, 1], rng, TINY)
    with pytest.raises(ValueError, match="out of range"):
        plan_multilabel_video([0, TINY.num_classes], rng, TINY)


def test_check_dataset_config_names_the_keys_to_set():
    with pytest.raises(ConfigError, match="dataset.format") as err:
        check_dataset_config(DatasetConfig(), "my_params.yaml")
    message = str(err.value)
    assert "my_params.yaml" in message and "charades" in message and TRAIN_FILE in message
    check_dataset_config(CHARADES, "params.yaml")  # the matching config passes
    with pytest.raises(ConfigError, match=r"dataset\.ext.*\.mp4"):
        check_dataset_config(CHARADES, "params.yaml", codec="h264")
