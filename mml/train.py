"""Training of a stage: M models, one loader, one step; per-epoch validation, checkpoints, resume.

`JointStep` is the whole method on one screen: forward every model on its modality of
the same clips, task loss (+ w * mutual KL to the detached peers for ML/MML, + the MSE to a
frozen teacher's features (MARS) or logits (D3D)), one backward, every optimizer steps.
Everything random is seeded from (seed, epoch), so a run interrupted after any epoch and
resumed from `last.pt` ends with the same numbers. Under torchrun the stage's models run as
one DistributedDataParallel module over each process's slice of the global batch (see
`mml.distributed`); rank 0 alone logs to MLflow and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mml import artifacts, distributed, fsio, losses, seeds, stage_files, tracking
from mml.config import Params, StageConfig
from mml.data.dataset import Batch, VideoClips, load_split, make_loader, stage_caches
from mml.distributed import World
from mml.inference import merge_predictions, predict_dataset, val_batches
from mml.metrics import summarize
from mml.models.factory import build_model, model_meta
from mml.progress import progress_bar
from mml.stage_setup import check_inits, learning_rate, load_teacher, make_optimizer

log = logging.getLogger(__name__)

# Validation clips a process keeps in memory between validations (mml.data.dataset.KeptBatches):
# the default's are about 10 MB per modality; a larger set is decoded again each time.
KEEP_VAL_BYTES = 1 << 30


@dataclass
class Member:
    """One model of a stage with its optimizer and MLflow run."""

    index: int
    modality: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    run_id: str = ""
    history: list[dict[str, float]] = field(default_factory=list)


class JointForward(torch.nn.Module):
    """A stage's models as one module: one DistributedDataParallel wraps them all (one
    gradient all-reduce per step), MARS's feature maps included."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(
        self, inputs: list[torch.Tensor], with_features: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return [
            model.forward_with_features(x) if with_features else (model(x), None)
            for model, x in zip(self.models, inputs, strict=True)
        ]


@dataclass
class JointStep:
    """The method on one screen: one optimisation step of a stage's M models on one batch.

    Every model sees its own modality of the same clips; a MARS/D3D student also matches the
    frozen `teacher` (which sees `teacher_modality`).
    """

    cfg: StageConfig
    members: list[Member]
    multilabel: bool
    num_classes: int
    clip_grad: float | None = None
    teacher: torch.nn.Module | None = None
    teacher_modality: str = ""
    net: torch.nn.Module | None = None  # the members' models as one (DDP) module
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32  # of the weights and inputs
    autocast: torch.dtype | None = None  # mixed precision: the forward pass's lower precision
    scaler: torch.amp.GradScaler | None = None  # fp16: loss scaling

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = JointForward([m.model for m in self.members])

    def __call__(self, batch: Batch, lr: float, weight: float = 1.0) -> list[dict[str, float]]:
        """One optimisation step of every model on `batch`; returns per-model loss terms.

        `weight` scales the loss that is backpropagated (DDP: this process's share of a global
        batch whose shards differ in size); the returned terms are unscaled.
        """
        method, cfg = self.cfg.method, self.cfg
        targets = batch.targets.to(self.device)
        inputs = [batch.inputs[m.modality].to(self.device, self.dtype) for m in self.members]
        with self._forward_precision():
            # MARS matches feature maps before global pooling
            outputs = self.net(inputs, with_features=method == "mars")
            if self.teacher is not None:
                with torch.no_grad():
                    x = batch.inputs[self.teacher_modality].to(self.device, self.dtype)
                    teacher = self.teacher.forward_with_features(x)
        if self.autocast is not None:  # every loss term (CE/BCE, KL, MSE) in float32
            outputs = [(own.float(), None if f is None else f.float()) for own, f in outputs]
            if self.teacher is not None:
                teacher = tuple(t.float() for t in teacher)
        logits = [out[0] for out in outputs]
        stats, total = [], 0.0
        for i, (own, fmap) in enumerate(outputs):
            loss_task = losses.task_loss(own, targets, multilabel=self.multilabel)
            loss = loss_task
            terms = {"train/loss_ce": loss_task.item()}
            if method in ("ml", "mml"):
                peers = [logits[j] for j in range(len(logits)) if j != i]
                loss_kl = losses.mutual_kl(own, peers, multilabel=self.multilabel, form=cfg.kl_form)
                loss = loss + cfg.kl_weight * loss_kl
                terms["train/loss_kl"] = loss_kl.item()
            elif method in ("mars", "d3d"):
                student, target = (fmap, teacher[1]) if method == "mars" else (own, teacher[0])
                loss_distill = losses.distill_mse(
                    student, target, multilabel=self.multilabel, num_classes=self.num_classes
                )
                loss = loss + cfg.distill * loss_distill
                terms["train/loss_distill"] = loss_distill.item()
            terms["train/loss"] = loss.item()
            terms["train/top1"] = _top1(own, targets, self.multilabel)
            stats.append(terms)
            total = total + loss
        for m in self.members:
            m.optimizer.zero_grad(set_to_none=True)
            for group in m.optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
        scaled = total * weight
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()  # models share no parameters: one backward serves all
        for m in self.members:
            if self.scaler is not None:
                self.scaler.unscale_(m.optimizer)  # clip the true gradients
            if self.clip_grad:
                torch.nn.utils.clip_grad_norm_(m.model.parameters(), self.clip_grad)
            if self.scaler is not None:
                self.scaler.step(m.optimizer)  # skipped when a gradient overflowed
            else:
                m.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        return stats

    def _forward_precision(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)


def precision_dtypes(precision: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the weights, inputs and checkpoints; dtype of the autocast forward or None)
    of a `compute.precision`: mixed precision keeps float32 weights (and float32 losses)."""
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return (torch.float64 if precision == "float64" else torch.float32), autocast


def for_precision(model: torch.nn.Module, arch: str, autocast: torch.dtype | None):
    """`model` laid out for its precision: 2D TSM models in channels_last under mixed
    precision (NHWC convolutions are the fast ones there), otherwise unchanged."""
    if autocast is not None and arch.startswith("tsm"):
        return model.to(memory_format=torch.channels_last)
    return model


def _top1(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> float:
    if multilabel:
        return float("nan")
    return (logits.argmax(-1) == targets).float().mean().item() * 100


class Trainer:
    """Trains every model of `stage` together; see the module docstring."""

    def __init__(
        self,
        params: Params,
        stage: str,
        *,
        show_progress: bool = True,
        out_dir: Path | None = None,
        world: World | None = None,
    ) -> None:
        self.stage = stage
        self.cfg = params.stage(stage)
        self.params = params.for_stage(stage)
        check_inits(stage, self.cfg)
        self.world = world or World(device=distributed.pick_device(self.params.compute.device))
        distributed.set_threads(self.params.compute, self.params.loader.workers)
        self.dtype, self.autocast = precision_dtypes(self.params.compute.precision)
        self.show_progress = show_progress and self.world.main
        # checkpoints (and curves) of this run; elsewhere than checkpoints/<stage> for tuning trials
        self.out_dir = out_dir or artifacts.checkpoint_dir(self.params.paths.checkpoints, stage)
        self.curves_dir = (
            out_dir / "curves" if out_dir else artifacts.curves_dir(self.params.paths.plots, stage)
        )
        self.train_ann = load_split(self.params.dataset, "train")
        self.val_ann = load_split(self.params.dataset, "val")
        self.multilabel = self.train_ann.multilabel
        self.num_classes = len(self.train_ann.classes)
        self.teacher, self.teacher_modality = None, ""
        if self.cfg.teacher:
            self.teacher, self.teacher_modality = load_teacher(
                self.params.paths.checkpoints, self.cfg.teacher, self.num_classes, stage
            )
            self.teacher.to(self.world.device, self.dtype)
        modalities = sorted({m.modality for m in self.cfg.models} | {self.teacher_modality} - {""})
        caches = stage_caches(self.params, modalities)
        self.train_set = VideoClips(
            self.train_ann,
            self.params.clip,
            train=True,
            seed=self.params.seed,
            modalities=modalities,
            caches=caches,
        )
        own = sorted({m.modality for m in self.cfg.models})  # the teacher is not validated
        self.val_set = VideoClips(
            self.val_ann, self.params.clip, train=False, modalities=own, caches=caches
        )
        self.val_batches = val_batches(
            self.val_set,
            self.params.loader,
            self.params.evaluate.batch_size,
            self.world.rank,
            self.world.size,
            budget=KEEP_VAL_BYTES,
        )
        self.members = [self._member(k) for k in range(len(self.cfg.models))]
        self.joint = JointStep(
            self.cfg,
            self.members,
            self.multilabel,
            self.num_classes,
            clip_grad=self.params.train.clip_grad,
            teacher=self.teacher,
            teacher_modality=self.teacher_modality,
            net=distributed.wrap(JointForward([m.model for m in self.members]), self.world),
            device=self.world.device,
            dtype=self.dtype,
            autocast=self.autocast,
            scaler=(
                torch.amp.GradScaler(self.world.device.type)
                if self.params.compute.precision == "fp16"
                else None
            ),
        )
        self.start_epoch = 0
        self.parent_run_id = ""

    def _member(self, k: int) -> Member:
        spec = self.cfg.models[k]
        torch.manual_seed(seeds.model_init(self.params.seed, k))
        model = build_model(
            self.params.model,
            len(self.train_ann.classes),
            spec.modality,
            spec.init,
            checkpoints=self.params.paths.checkpoints,
        ).to(self.world.device, self.dtype)
        model = for_precision(model, self.params.model.arch, self.autocast)
        if self.world.distributed and self.params.compute.sync_bn:
            model = distributed.sync_batchnorm(model, self.world.device)
        optimizer = make_optimizer(model, self.params, fresh_head=spec.init == "imagenet")
        return Member(k, spec.modality, model, optimizer)

    # ---- epochs --------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[list[dict[str, float]], int]:
        """One epoch; per-model mean loss terms over all processes' samples, and skips."""
        w = self.world
        torch.manual_seed(seeds.dropout(self.params.seed, epoch, w.rank, w.size))
        for m in self.members:
            m.model.train()
        loader = make_loader(
            self.train_set,
            self.params.loader,
            shuffle=True,
            epoch=epoch,
            seed=self.params.seed,
            rank=w.rank,
            world_size=w.size,
        )
        sums: list[dict[str, float]] = [dict() for _ in self.members]
        seen, skipped = 0, 0
        with progress_bar(
            f"{self.stage} epoch {epoch + 1}", len(loader), self.show_progress
        ) as bar:
            for i, batch in enumerate(loader):
                skipped += len(batch.skipped)
                counts = distributed.all_gather_int(w, len(batch.ids))
                if min(counts) > 0:
                    lr = self.lr_at(epoch + i / len(loader))
                    n = len(batch.ids)
                    # DDP averages gradients over processes: weight each by its share
                    terms = self.joint(batch, lr, weight=w.size * n / sum(counts))
                    for acc, t in zip(sums, terms, strict=True):
                        for key, value in t.items():
                            acc[key] = acc.get(key, 0.0) + value * n
                    seen += n
                elif sum(counts):  # every process must step together
                    log.warning(
                        "%s: a process got only broken videos; the other %d "
                        "videos of this batch are not trained on",
                        self.stage,
                        sum(counts),
                    )
                bar()
        keys = [list(acc) for acc in sums]  # the same on every process
        totals = distributed.all_sum(
            w, [seen, skipped, *(acc[k] for acc, ks in zip(sums, keys, strict=True) for k in ks)]
        )
        seen, skipped, flat = max(int(totals[0]), 1), int(totals[1]), iter(totals[2:])
        return [{k: next(flat) / seen for k in ks} for ks in keys], skipped

    @torch.no_grad()
    def validate(self) -> tuple[list[dict[str, float]], int]:
        """Single centre-view validation of every model (the paper's ablation protocol)."""
        w = self.world
        results = predict_dataset(
            [m.model for m in self.members],
            [m.modality for m in self.members],
            self.val_set,
            self.params.loader,
            batch_size=self.params.evaluate.batch_size,
            fuse="logits",
            label=f"{self.stage} validate",
            show_progress=self.show_progress,
            rank=w.rank,
            world_size=w.size,
            batches=self.val_batches,
        )
        if w.distributed:  # each process predicted its part of the validation set
            results = merge_predictions(distributed.all_gather_objects(w, results))
        metrics = [
            {f"val/{k}": v for k, v in summarize(r.scores, r.targets, self.multilabel).items()}
            for r in results.members
        ]
        return metrics, len(results.skipped)

    def lr_at(self, epoch: float) -> float:
        return learning_rate(self.params.train, epoch)

    # ---- the whole run ---------------------------------------------------------------------
    def run(
        self,
        *,
        restart: bool = False,
        restart_if_changed: bool = False,
        on_epoch: Callable[[int, list[dict[str, float]]], None] | None = None,
        parent_run_id: str | None = None,
        run_tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> list[dict]:
        """Train to `train.epochs`; final metrics per model.

        Resumes from last.pt unless `restart`. A last.pt written with other params (or other
        init/teacher checkpoints) is an error, or with `restart_if_changed` (pipelines, where
        a changed input means "run again") a fresh start. `on_epoch(epoch, per-model metrics)`
        runs after every validated epoch (tuning reports to Optuna there, and may stop the run by
        raising); `parent_run_id` nests the stage's MLflow run, which gets `run_tags`, `run_name`.
        """
        w = self.world
        client = self._open(restart, restart_if_changed, parent_run_id, run_tags, run_name)
        for epoch in range(self.start_epoch, self.params.train.epochs):
            train_stats, skipped = self.train_epoch(epoch)
            validated = self.params.train.validates(epoch)
            val_stats, val_skipped = (
                self.validate() if validated else ([{} for _ in self.members], 0)
            )
            for m, tr, va in zip(self.members, train_stats, val_stats, strict=True):
                row = {**tr, **va, "lr": self.lr_at(epoch), "data/skipped": skipped + val_skipped}
                m.history.append(row)
                if w.main:
                    tracking.log_metrics(client, m.run_id, row, step=epoch)
            for m in self.members:
                shown = ", ".join(f"{k} {v:.3g}" for k, v in m.history[-1].items() if k != "lr")
                log.info(
                    "%s.%d epoch %d/%d: %s",
                    self.stage,
                    m.index,
                    epoch + 1,
                    self.params.train.epochs,
                    shown,
                )
            if w.main:
                self._save(epoch + 1)
                self._write_curves()
            if on_epoch is not None and validated:
                on_epoch(epoch, [m.history[-1] for m in self.members])
        if w.main:
            self._write_curves()  # also when resumed complete: DVC removed them before the run
            for m in self.members:
                path = artifacts.stage_checkpoint(self.out_dir, m.index)
                tracking.log_artifacts(client, m.run_id, [path], "checkpoint")
            self.end_runs(client)
        return [m.history[-1] for m in self.members]

    def _open(self, restart, restart_if_changed, parent_run_id, run_tags, run_name):
        """Resume from last.pt or start fresh; (re)open the MLflow runs (rank 0: its client)."""
        w = self.world
        client, experiment_id = (
            tracking.client_and_experiment(self.params) if w.main else (None, "")
        )
        if w.main:
            fsio.remove_temp_files(self.out_dir)  # half-written files of a killed run
        state = None if restart else self._saved_state(strict=not restart_if_changed)
        distributed.barrier(w)  # every process has read last.pt before rank 0 replaces it
        if state is not None:
            self._resume(client, state)
        elif w.main:
            digest = self.fingerprint()
            # every model of an earlier run (e.g. 2.pt of a 3-model stage) and its last.pt
            for stale in [
                *artifacts.model_checkpoints(self.out_dir),
                artifacts.last_checkpoint(self.out_dir),
            ]:
                stale.unlink(missing_ok=True)
            tags = {**(run_tags or {}), tracking.Tag.PROCESSES: str(w.size)}
            self.parent_run_id = tracking.start_stage(
                client,
                experiment_id,
                self.params,
                self.stage,
                params_hash=digest,
                parent_run_id=parent_run_id,
                extra_tags=tags,
                run_name=run_name,
            )
            for m in self.members:
                m.run_id = tracking.start_model(
                    client,
                    experiment_id,
                    self.params,
                    self.stage,
                    m.index,
                    self.parent_run_id,
                    params_hash=digest,
                )
        if w.distributed:
            log.info("%s: %d processes (%s) on %s", self.stage, w.size, w.backend, w.device)
        return client

    def end_runs(self, client, status: str = "FINISHED") -> None:
        """Close the MLflow runs of the stage and its models."""
        for run_id in [*(m.run_id for m in self.members), self.parent_run_id]:
            if run_id:
                tracking.end_run(client, run_id, status)

    def _write_curves(self) -> None:
        stage_files.write_curves(self.curves_dir, [(m.index, m.history) for m in self.members])

    def fingerprint(self) -> str:
        """Hash of everything that shapes this stage's training (resume must match it)."""
        return stage_files.fingerprint(self.params, self.cfg)

    def _save(self, epochs_done: int) -> None:
        models = []
        for m in self.members:
            meta = model_meta(
                self.params.model,
                m.model,
                m.modality,
                classes=list(self.train_ann.classes),
                stage=self.stage,
                index=m.index,
                init=self.cfg.models[m.index].init,
                run_id=m.run_id,
                parent_run_id=self.parent_run_id,
                epochs=epochs_done,
                multilabel=self.multilabel,
                clip=self.params.clip.model_dump(mode="json"),
            )
            models.append(stage_files.SavedModel(m.model, m.optimizer, meta, m.history))
        stage_files.save(
            self.out_dir,
            models,
            fingerprint=self.fingerprint(),
            epochs_done=epochs_done,
            parent_run_id=self.parent_run_id,
            scaler=None if self.joint.scaler is None else self.joint.scaler.state_dict(),
        )

    def _saved_state(self, *, strict: bool) -> dict | None:
        return stage_files.saved_state(self.out_dir, self.fingerprint(), self.stage, strict=strict)

    def _resume(self, client, state: dict) -> None:
        self.start_epoch = state["epoch"]
        self.parent_run_id = state["parent_run_id"]
        for m, saved in zip(self.members, state["members"], strict=True):
            m.model.load_state_dict(saved["model"])
            m.optimizer.load_state_dict(saved["optimizer"])
            m.run_id, m.history = saved["run_id"], list(saved["history"])
        if self.joint.scaler is not None and state.get("scaler"):
            self.joint.scaler.load_state_dict(state["scaler"])
        if self.world.main:
            for run_id in [self.parent_run_id, *(m.run_id for m in self.members)]:
                tracking.resume_run(client, run_id)
        log.info("%s: resuming after epoch %d from last.pt", self.stage, self.start_epoch)


def train_stage(
    params: Params,
    stage: str,
    *,
    restart: bool = False,
    restart_if_changed: bool = False,
    show_progress: bool = True,
) -> list[dict]:
    """Train `stage` (resume when possible) and return the final per-model metrics.

    Under torchrun (RANK/WORLD_SIZE set) this process joins the others first.
    """
    world = distributed.setup(params.for_stage(stage).compute)
    try:
        trainer = Trainer(params, stage, show_progress=show_progress, world=world)
        final = trainer.run(restart=restart, restart_if_changed=restart_if_changed)
    except BaseException:
        distributed.teardown(world, wait=False)
        raise
    distributed.teardown(world)
    return final
