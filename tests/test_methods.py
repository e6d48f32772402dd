"""ML / MML / MARS / D3D stages end to end on tiny real videos, and their config rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from conftest import tiny_params
from mlflow.tracking import MlflowClient
from test_pipeline import mml, runner, runs

from mml.artifacts import read_stage_metrics
from mml.cli import app
from mml.config import ConfigError, StageConfig, load_params
from mml.data.dataset import collate
from mml.losses import distill_mse, mutual_kl, task_loss
from mml.train import Trainer

RGB = {"modality": "rgb", "init": "scratch"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_dataset):
    """One project for the module: flow/diff caches, an RGB and a Flow CE model (1 epoch)."""
    root = tmp_path_factory.mktemp("methods")
    params = tiny_params(tiny_dataset)
    params["train"]["epochs"] = 1
    params["cache"] = {"flow_algorithm": "dis"}  # TV-L1 is covered in test_cache; DIS is fast
    params["stages"]["flow_ce"] = {"method": "ce", "models": [{"modality": "flow"}]}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "mlruns").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        for args in (("data", "flow"), ("data", "diff")):
            mml(*args, "--workers", "1")
        mml("train", "rgb_ce")
        mml("train", "flow_ce")
        yield root


def set_stages(project, **stages) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["stages"].update(stages)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_mml_trains_three_modalities_on_aligned_clips_and_relaunches(workdir):
    project = workdir
    three = [{"modality": m, "init": "rgb_ce.0"} for m in ("rgb", "flow", "diff")]
    relaunch = [{"modality": "rgb", "init": "mml.0"}, {"modality": "flow", "init": "mml.1"}]
    set_stages(
        project, mml={"method": "mml", "models": three}, again={"method": "mml", "models": relaunch}
    )
    mml("train", "mml")
    _, parents, children = runs("mml")
    assert len(parents) == 1 and len(children) == 3
    by_modality = {c.data.tags["modality"]: c for c in children}
    assert set(by_modality) == {"rgb", "flow", "diff"}
    assert by_modality["rgb"].data.tags["peers"] == "flow,diff"
    for child in children:
        assert child.data.tags["method"] == "mml" and child.data.tags["init"] == "rgb_ce.0"
        assert child.data.metrics["train/loss_kl"] > 0
        assert {"train/loss_ce", "val/top1", "val/top5"} <= set(child.data.metrics)
        assert child.data.params["stage.kl_weight"] == "1.0"
    flow = torch.load(project / "checkpoints/mml/1.pt", weights_only=True)
    assert flow["meta"]["modality"] == "flow" and flow["meta"]["in_channels"] == 10
    # BAN-style relaunch from the MML models (each keeps its own modality's first conv)
    mml("train", "again")
    _, _, children = runs("again")
    assert {c.data.tags["init"] for c in children} == {"mml.0", "mml.1"}
    mml("evaluate", "mml")
    report = read_stage_metrics(project / "metrics/mml.json")
    assert [report.models[k].modality for k in range(3)] == ["rgb", "flow", "diff"]


@pytest.mark.slow
def test_joint_step_updates_every_model_with_its_own_gradient(workdir):
    """The summed loss's backward gives each model the gradient of its own loss only."""
    two = [{"modality": "rgb", "init": "rgb_ce.0"}, {"modality": "flow", "init": "flow_ce.0"}]
    no_clip = {"train.clip_grad": None}  # clipping would rescale the gradients compared below
    pair = {"method": "mml", "models": two, "kl_weight": 2.0, "overrides": no_clip}
    set_stages(workdir, pair=pair)
    trainer = Trainer(load_params(workdir / "params.yaml"), "pair", show_progress=False)
    batch = collate([trainer.train_set[i] for i in range(4)])
    before = [copy.deepcopy(m.model.state_dict()) for m in trainer.members]
    for m in trainer.members:
        m.model.eval()  # no dropout / BN updates: the reference gradients below must match
    rgb, flow = (m.model for m in trainer.members)
    z_rgb, z_flow = rgb(batch.inputs["rgb"]), flow(batch.inputs["flow"])
    own = task_loss(z_rgb, batch.targets, multilabel=False) + 2.0 * mutual_kl(z_rgb, [z_flow])
    expected = torch.autograd.grad(own, rgb.fc.weight)[0]
    stats = trainer.joint(batch, lr=0.01)
    assert torch.allclose(rgb.fc.weight.grad, expected, atol=1e-6)
    assert stats[0]["train/loss"] == pytest.approx(own.item(), rel=1e-5)
    for m, state in zip(trainer.members, before, strict=True):
        assert not torch.equal(m.model.fc.weight, state["fc.weight"]), "an optimizer did not step"


@pytest.mark.slow
def test_i3d_backbone_trains_with_mutual_learning(workdir):
    two = [RGB, {"modality": "flow", "init": "scratch"}]
    set_stages(
        workdir, i3d={"method": "mml", "models": two, "overrides": {"model.arch": "i3d_resnet18"}}
    )
    mml("train", "i3d")
    payload = torch.load(workdir / "checkpoints/i3d/1.pt", weights_only=True)
    assert payload["meta"]["model"]["arch"] == "i3d_resnet18"
    assert payload["state_dict"]["backbone.conv1.weight"].shape[1:] == (10, 5, 7, 7)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mars", "d3d"])
def test_distillation_from_a_frozen_flow_teacher(workdir, method):
    project = workdir
    student = f"student_{method}"
    set_stages(project, **{student: {"method": method, "models": [RGB], "teacher": "flow_ce.0"}})
    before = (project / "checkpoints/flow_ce/0.pt").read_bytes()
    params = load_params(project / "params.yaml")
    trainer = Trainer(params, student, show_progress=False)
    teacher_state = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train_epoch(0)
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key]), f"teacher changed: {key}"
    assert not trainer.teacher.training
    assert all(p.grad is None for p in trainer.teacher.parameters())
    mml("train", student)
    assert (project / "checkpoints/flow_ce/0.pt").read_bytes() == before
    _, _, children = runs(student)
    child = children[0]
    assert child.data.tags["teacher"] == "flow_ce.0" and child.data.tags["method"] == method
    assert child.data.metrics["train/loss_distill"] > 0
    expected = "50.0" if method == "mars" else "1.0"
    assert child.data.params["stage.distill_weight"] == expected
    history = MlflowClient().get_metric_history(child.info.run_id, "train/loss_distill")
    assert len(history) == 1


def test_missing_teacher_is_a_clear_error(project):
    set_stages(project, student={"method": "d3d", "models": [RGB], "teacher": "nope.0"})
    result = runner.invoke(app, ["train", "student", "-q"])
    assert result.exit_code == 2 and "train stage 'nope' first" in result.output


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"method": "ml", "models": [RGB]}, "M >= 2"),
        ({"method": "ml", "models": [RGB, {"modality": "flow"}]}, "use method 'mml'"),
        ({"method": "mml", "models": [RGB, RGB]}, "use method 'ml'"),
        ({"method": "mars", "models": [RGB]}, "needs teacher"),
        ({"method": "d3d", "models": [RGB, RGB], "teacher": "f.0"}, "one student"),
        ({"method": "ml", "models": [RGB, RGB], "teacher": "f.0"}, "mars and d3d only"),
    ],
)
def test_stage_rules_name_the_problem(tmp_path, stage, message):
    with pytest.raises(ValueError, match=message):
        StageConfig(**stage)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"stages": {"bad": stage}}))
    with pytest.raises(ConfigError, match="stages.bad"):
        load_params(path)


def test_identical_inits_are_refused_for_mml_too(project):
    twice = [{"modality": "rgb", "init": "a.0"}, {"modality": "rgb", "init": "a.0"}]
    set_stages(project, dup={"method": "mml", "models": [*twice, {"modality": "flow"}]})
    result = runner.invoke(app, ["train", "dup", "-q"])
    assert result.exit_code == 2 and "rgb from a.0 appear twice" in result.output


def test_distill_weights_default_to_the_papers():
    assert StageConfig(method="mars", teacher="f.0").distill == 50.0
    assert StageConfig(method="d3d", teacher="f.0").distill == 1.0
    assert StageConfig(method="d3d", teacher="f.0", distill_weight=0.5).distill == 0.5


def test_distill_mse_hand_computed_and_multilabel_division():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [0.0, 2.0]], requires_grad=True)
    # squared errors 1, 4, 0, 4 -> mean 9 / 4
    assert distill_mse(student, teacher).item() == pytest.approx(2.25)
    loss = distill_mse(student, teacher, multilabel=True, num_classes=3)
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="same architecture"):
        distill_mse(student, torch.zeros(2, 3))


@pytest.mark.slow
def test_multilabel_charades_format_trains_with_bce_kl_mean_and_map(project):
    """The Charades-like variant: `mml data synth` writes it, ML trains on it, mAP is reported."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synth"].update(multilabel=True, actions=[1, 2], train_per_class=2, val_per_class=1)
    params["dataset"] = {
        "name": "tiny",
        "format": "charades",
        "root": "charades",
        "labels": "Charades_v1_classes.txt",
        "train": "Charades_v1_train.csv",
        "val": "Charades_v1_test.csv",
    }
    params["train"]["epochs"] = 1
    params["stages"] = {"ml": {"method": "ml", "models": [RGB, RGB]}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    mml("data", "synth", "--workers", "1")
    trainer = Trainer(load_params(project / "params.yaml"), "ml", show_progress=False)
    assert trainer.multilabel
    batch = collate([trainer.train_set[i] for i in range(4)])
    assert batch.targets.shape == (4, 4) and set(batch.targets.unique().tolist()) == {0.0, 1.0}
    for m in trainer.members:
        m.model.eval()
    with torch.no_grad():
        z0, z1 = (m.model(batch.inputs["rgb"]) for m in trainer.members)
    stats = trainer.joint(batch, lr=0.0)
    assert stats[0]["train/loss_kl"] == pytest.approx(
        mutual_kl(z0, [z1], multilabel=True).item(), rel=1e-4
    )  # the "mean" regime: / (B * N), paper App. 2
    assert stats[0]["train/loss_ce"] == pytest.approx(
        task_loss(z0, batch.targets, multilabel=True).item(), rel=1e-5
    )
    mml("train", "ml")
    _, _, children = runs("ml")
    assert all("val/mAP" in c.data.metrics and "val/top1" not in c.data.metrics for c in children)
    mml("evaluate", "ml")
    scores = read_stage_metrics(project / "metrics/ml.json").models[0].scores
    assert 0 < scores["mAP"] <= 100 and "top1" not in scores


def steps_at(workdir, stage: str, precision: str, batches: list) -> tuple[list, list, Trainer]:
    """Per-step losses of `stage` trained on `batches` at `precision`, then its eval logits on
    the first batch (dropout masks and inits are the same at every precision)."""
    params = load_params(workdir / "params.yaml", [f"compute.precision={precision}"])
    trainer = Trainer(params, stage, show_progress=False)
    torch.manual_seed(0)
    losses = [[t["train/loss"] for t in trainer.joint(b, lr=0.005)] for b in batches]
    for m in trainer.members:
        m.model.eval()
    with torch.no_grad():
        logits = [m.model(batches[0].inputs[m.modality]) for m in trainer.members]
    return losses, logits, trainer


@pytest.mark.slow
def test_bf16_mixed_precision_tracks_float32_for_ce_and_mml(workdir):
    """N steps of CE and of MML (RGB + Flow) under bf16 autocast stay within stated tolerances
    of float32 from the same inits on the same batches; the weights stay float32."""
    # SGD: Adam's first steps are sign(gradient) for every weight, which turns bf16 rounding
    # into other directions; no dropout: its masks are drawn on tensors of another dtype
    sgd = {"train.optimizer": "sgd", "train.clip_grad": None, "model.dropout": 0.0}
    two = [{"modality": "rgb", "init": "scratch"}, {"modality": "flow", "init": "scratch"}]
    set_stages(
        workdir,
        amp_ce={"method": "ce", "models": [two[0]], "overrides": sgd},
        amp_mml={"method": "mml", "models": two, "overrides": sgd},
    )
    base = Trainer(load_params(workdir / "params.yaml"), "amp_mml", show_progress=False)
    items = [base.train_set[i % len(base.train_set)] for i in range(4 * BF16_STEPS)]
    batches = [collate(items[i : i + 4]) for i in range(0, len(items), 4)]
    for stage in ("amp_ce", "amp_mml"):
        f32, f32_logits, _ = steps_at(workdir, stage, "float32", batches)
        bf16, bf16_logits, trainer = steps_at(workdir, stage, "bf16", batches)
        assert bf16[0] == pytest.approx(f32[0], rel=BF16_FIRST), stage  # the forward alone
        for a, b in zip(f32, bf16, strict=True):
            assert b == pytest.approx(a, rel=BF16_LOSS), stage
        for a, b in zip(f32_logits, bf16_logits, strict=True):
            gap = (torch.softmax(b, -1) - torch.softmax(a, -1)).abs().max().item()
            assert gap <= BF16_PROB, stage
        for m in trainer.members:
            assert {p.dtype for p in m.model.parameters()} == {torch.float32}
    # fp16 (for GPUs) runs through the same step with a GradScaler
    fp16, _, trainer = steps_at(workdir, "amp_mml", "fp16", batches[:2])
    assert trainer.joint.scaler is not None and all(map(math.isfinite, sum(fp16, [])))


BF16_STEPS = 8  # optimisation steps compared
BF16_FIRST = 0.005  # relative difference of the first step's loss (same weights: the forward)
BF16_LOSS = 0.15  # relative difference of each step's loss (measured: up to 0.09)
BF16_PROB = 0.06  # largest difference of the final models' class probabilities (0.027)
