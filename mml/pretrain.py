"""`mml pretrain`: still-frame pretraining, the synthetic default's stand-in for ImageNet.

The paper starts every network from ImageNet weights: RGB directly, Flow and Diff through
TSN's cross-modality init of the first convolution (`mml.models.stem.set_in_channels`). No
weights can be downloaded here, and an RGB TSM trained from random weights on the proxy lands
anywhere between chance and 73 % depending on its launch (README, *The synthetic dataset*). So
the default pretrains once: the stage architecture learns where the object is in still frames
(mml.data.synth.stills: a stream of the generator that shares nothing with the dataset), each
frame a static clip of `clip.segments` copies, as a 2D ImageNet network sees a video when its
weights are loaded into a TSM. The checkpoint keeps its pretext head; `init: pretrain.0`
(mml.models.factory) loads everything but that head, as `init: imagenet` does.

Training is one process, seeded by `pretrain.seed` alone (not `seed`): like ImageNet weights,
the starting point stays fixed while training seeds vary. It takes under a minute on the
default, so an interrupted run starts over rather than resuming.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mml import artifacts, checkpoint, seeds, tracking
from mml.config import ConfigError, Params
from mml.data import transforms
from mml.data.synth.stills import GRID, render_stills
from mml.distributed import pick_device, set_threads
from mml.models.factory import build_model, model_meta
from mml.progress import progress_bar

log = logging.getLogger(__name__)

STAGE = artifacts.PRETRAIN  # checkpoints/pretrain/0.pt, metrics/pretrain.json
PRETEXT = f"object position ({GRID}x{GRID} cells) in still frames"
CLIP_GRAD = 20.0  # the training default's gradient-norm clip
MIN_STEPS = 20  # one cycle warms up over a tenth of the steps: at least 2


@dataclass(frozen=True)
class PretrainResult:
    val_top1: float  # pretext accuracy on the held-out tenth of the stills, %
    train_loss: float  # mean cross-entropy of the last epoch
    run_id: str


def _batch(frames: np.ndarray, params: Params, rng: np.random.Generator | None) -> torch.Tensor:
    """Static clips (B, T, 3, crop, crop): a random multi-scale crop per frame (centre crop when
    `rng` is None), no flip (labels are positions), ImageNet-normalised like RGB clips."""
    c = params.clip
    h, w = frames.shape[1:3]
    xs = []
    for frame in frames:
        if rng is None:
            crop = transforms.center_crop(h, w, scale_size=c.scale_size, crop_size=c.crop_size)
        else:
            crop = transforms.multiscale_crop(
                h,
                w,
                scale_size=c.scale_size,
                crop_size=c.crop_size,
                scales=tuple(c.scales),
                max_distort=c.max_distort,
                flip=False,
                rng=rng,
            )
        xs.append(transforms.apply_crop(frame, crop, c.crop_size))
    x = transforms.normalize(torch.stack(xs), transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    return x[:, None].expand(-1, c.segments, -1, -1, -1).contiguous()


def pretrain(params: Params, *, show_progress: bool = True) -> PretrainResult:
    """Render the stills, train, write checkpoints/pretrain/0.pt and metrics/pretrain.json."""
    cfg = params.pretrain
    set_threads(params.compute, workers=0)
    device = pick_device(params.compute.device)
    frames, labels = render_stills(params.synth, cfg.seed, cfg.images)
    held = max(1, cfg.images // 10)
    val_x, val_y = frames[:held], torch.from_numpy(labels[:held])
    train_x, train_y = frames[held:], torch.from_numpy(labels[held:])
    steps_per_epoch = len(train_x) // cfg.batch_size
    if cfg.epochs * steps_per_epoch < MIN_STEPS:
        raise ConfigError(
            f"{params.source}: pretrain trains {cfg.epochs} epochs x {steps_per_epoch} batches "
            f"(pretrain.images less a tenth, over pretrain.batch_size); one cycle needs at least "
            f"{MIN_STEPS} steps: raise pretrain.images or pretrain.epochs."
        )

    torch.manual_seed(seeds.pretrain_model(cfg.seed))
    rng = seeds.pretrain_batches(cfg.seed)
    model = build_model(params.model, GRID * GRID, "rgb", "scratch").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )
    client, experiment_id = tracking.client_and_experiment(params)
    run_id = tracking.start_step(client, experiment_id, params, tracking.Role.PRETRAIN)
    tracking.log_params(
        client,
        run_id,
        {k: v for k, v in params.flat().items() if k.startswith(("pretrain.", "model."))}
        | {"pretrain.pretext": PRETEXT},
    )
    status = "FAILED"
    try:
        with progress_bar("pretrain", cfg.epochs * steps_per_epoch, show_progress) as advance:
            for epoch in range(cfg.epochs):
                model.train()
                order = rng.permutation(len(train_x))
                total = 0.0
                for step in range(steps_per_epoch):
                    idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    x = _batch(train_x[idx], params, rng).to(device)
                    loss = F.cross_entropy(model(x), train_y[idx].to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD)
                    optimizer.step()
                    schedule.step()
                    total += loss.item()
                    advance()
                val_top1 = _accuracy(model, val_x, val_y, params, device)
                train_loss = total / steps_per_epoch
                tracking.log_metrics(
                    client, run_id, {"train/loss": train_loss, "val/top1": val_top1}, epoch + 1
                )
                log.info(
                    "pretrain epoch %d/%d: loss %.3f, held-out top-1 %.1f",
                    epoch + 1,
                    cfg.epochs,
                    train_loss,
                    val_top1,
                )
        meta = model_meta(
            params.model,
            model,
            "rgb",
            stage=STAGE,
            index=0,
            init="scratch",
            epochs=cfg.epochs,
            pretext=PRETEXT,
            run_id=run_id,
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        path = artifacts.checkpoint_path(params.paths.checkpoints, f"{STAGE}.0")
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(path, {"format": 1, "state_dict": state, "meta": meta})
        artifacts.write_json(
            artifacts.metrics_path(params.paths.metrics, STAGE),
            {
                "pretext": PRETEXT,
                "images": cfg.images,
                "held_out": held,
                "epochs": cfg.epochs,
                "val_top1": val_top1,
                "train_loss": train_loss,
                "run_id": run_id,
            },
        )
        status = "FINISHED"
    finally:
        tracking.end_run(client, run_id, status)
    return PretrainResult(val_top1, train_loss, run_id)


@torch.no_grad()
def _accuracy(
    model: torch.nn.Module,
    frames: np.ndarray,
    labels: torch.Tensor,
    params: Params,
    device: torch.device,
) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(frames), 64):
        x = _batch(frames[i : i + 64], params, None).to(device)
        hits += int((model(x).argmax(1).cpu() == labels[i : i + 64]).sum())
    return 100.0 * hits / len(frames)
