"""`mml pretrain`: the stills it learns from, its checkpoint, and models started from it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_SYNTH, tiny_params
from mlflow import MlflowClient

from mml import artifacts, tracking
from mml.config import ConfigError, ModelConfig, SynthConfig, load_params
from mml.data.synth import draw_video, plan_video
from mml.data.synth.stills import GRID, cell, frame_of, render_still, render_stills
from mml.models.factory import build_model
from mml.pretrain import pretrain

SPEC = SynthConfig(**{**TINY_SYNTH, "num_classes": 6})


def test_a_one_frame_plan_paints_exactly_that_frame():
    # pixel noise is drawn per plan, not per frame; the exposure gain is per frame
    spec = SPEC.model_copy(update={"noise": 0.0, "exposure": 0.2})
    for n in range(4):
        plan = plan_video(n % 6, np.random.default_rng(n), spec)
        video = draw_video(plan)
        for t in (0, len(video) // 2, len(video) - 1):
            np.testing.assert_array_equal(draw_video(frame_of(plan, t))[0], video[t])


def test_the_label_is_the_cell_where_the_object_is_drawn():
    spec = SPEC.model_copy(update={"noise": 0.0, "distractors": 0})
    checked = 0
    for n in range(80):
        plan = plan_video(n % 6, np.random.default_rng(100 + n), spec)
        frame = frame_of(plan, int(n % len(plan.shifts)))
        empty = replace(frame, tracks=())
        mask = np.abs(draw_video(frame)[0].astype(int) - draw_video(empty)[0]).sum(-1) > 30
        if mask.sum() < 4:
            continue  # the object is (nearly) out of the frame or has not appeared yet
        rows, cols = np.nonzero(mask)
        x, y = cols.mean() + 0.5, rows.mean() + 0.5  # pixel centres
        step = frame.width / GRID
        if min(abs(x / step - round(x / step)), abs(y / step - round(y / step))) < 0.15:
            continue  # too near a cell border to tell from the pixels
        assert cell(frame) == int(y // step) * GRID + int(x // step), n
        checked += 1
    assert checked >= 25


def test_stills_are_seeded_by_their_own_seed_only():
    a_frames, a_labels = render_stills(SPEC, 0, 12)
    b_frames, b_labels = render_stills(SPEC, 0, 12)
    np.testing.assert_array_equal(a_frames, b_frames)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert a_frames.shape == (12, SPEC.height, SPEC.width, 3) and a_frames.dtype == np.uint8
    assert set(a_labels) <= set(range(GRID * GRID)) and len(set(a_labels)) > 2
    c_frames, _ = render_stills(SPEC, 1, 12)
    assert not np.array_equal(a_frames, c_frames)
    # the dataset's seed is not part of a still's stream: the weights stay fixed across data
    other_data = SPEC.model_copy(update={"seed": SPEC.seed + 1})
    np.testing.assert_array_equal(render_still(other_data, 0, 5)[0], a_frames[5])
    with pytest.raises(ValueError, match="at least 1"):
        render_stills(SPEC, 0, 0)


@pytest.fixture
def pretrained(project, tiny_dataset):
    raw = tiny_params(tiny_dataset, pretrain={"images": 100, "epochs": 2, "batch_size": 8})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(project / "params.yaml")
    result = pretrain(params, show_progress=False)
    return params, result


@pytest.mark.slow
def test_pretrain_writes_a_pretext_checkpoint_metrics_and_an_mlflow_run(pretrained):
    params, result = pretrained
    path = artifacts.checkpoint_path(params.paths.checkpoints, "pretrain.0")
    payload = torch.load(path, weights_only=True)
    assert payload["meta"]["pretext"] and payload["meta"]["num_classes"] == GRID * GRID
    assert payload["meta"]["modality"] == "rgb" and payload["meta"]["epochs"] == 2
    metrics = artifacts.read_json(artifacts.metrics_path(params.paths.metrics, "pretrain"))
    assert metrics["val_top1"] == result.val_top1 and metrics["held_out"] == 10
    assert artifacts.evaluated_stages(params.paths.metrics) == []  # not a stage's test
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags[tracking.Tag.ROLE] == tracking.Role.PRETRAIN
    assert run.info.status == "FINISHED" and "val/top1" in run.data.metrics
    # same seed, same weights
    again = pretrain(params, show_progress=False)
    assert again.train_loss == result.train_loss
    twice = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(twice[k], v) for k, v in payload["state_dict"].items())


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["rgb", "flow", "diff"])
def test_a_model_from_pretrain_keeps_the_trunk_and_gets_a_new_head(pretrained, modality):
    params, _ = pretrained
    path = artifacts.checkpoint_path(params.paths.checkpoints, "pretrain.0")
    saved = torch.load(path, weights_only=True)["state_dict"]
    model = build_model(params.model, 4, modality, "pretrain.0", params.paths.checkpoints)
    state = model.state_dict()
    assert state["fc.weight"].shape == (4, saved["fc.weight"].shape[1])
    first = next(k for k in saved if k.endswith("weight") and saved[k].dim() == 4)
    for key, value in saved.items():
        if key.startswith("fc."):
            continue
        if key == first and modality != "rgb":  # TSN's cross-modality init of the first conv
            assert state[key].shape[1] == {"flow": 10, "diff": 15}[modality]
            mean = value.mean(dim=1, keepdim=True)
            assert torch.allclose(state[key], mean.expand_as(state[key]))
        else:
            assert torch.equal(state[key], value), key


def test_too_few_steps_name_the_keys(project, tiny_dataset):
    raw = tiny_params(tiny_dataset, pretrain={"images": 40, "epochs": 1, "batch_size": 8})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="raise pretrain.images or pretrain.epochs"):
        pretrain(load_params(project / "params.yaml"), show_progress=False)
    assert not (project / "checkpoints").exists()


@pytest.mark.slow
def test_a_pretext_checkpoint_of_another_architecture_is_refused(pretrained):
    params, _ = pretrained
    other = ModelConfig(arch="tsm_resnet18")
    with pytest.raises(Exception, match="is a tsm_mobilenet_v2 model"):
        build_model(other, 4, "rgb", "pretrain.0", params.paths.checkpoints)
    wider = params.model.model_copy(update={"width_mult": 1.0})
    with pytest.raises(Exception, match="run `mml pretrain` again"):
        build_model(wider, 4, "rgb", "pretrain.0", params.paths.checkpoints)
