"""What a stage needs before its first step: optimizer, learning rates, init checks, teacher."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mml import artifacts
from mml.config import ConfigError, Params, StageConfig, TrainConfig
from mml.models.factory import model_from_checkpoint


def make_optimizer(
    model: torch.nn.Module, params: Params, *, fresh_head: bool
) -> torch.optim.Optimizer:
    """SGD (or AdamW) with TSN's groups: no decay on biases/BN; a new head learns 5x (bias 10x)."""
    t = params.train
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("fc.")
        decay = t.weight_decay if p.dim() > 1 else 0.0
        mult = (10.0 if p.dim() == 1 else 5.0) if (is_head and fresh_head) else 1.0
        groups.setdefault((decay, mult), []).append(p)
    param_groups = [
        {"params": ps, "weight_decay": d, "lr_mult": m, "lr": t.lr * m}
        for (d, m), ps in groups.items()
    ]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=t.lr)
    return torch.optim.SGD(param_groups, lr=t.lr, momentum=t.momentum)


def learning_rate(t: TrainConfig, epoch: float) -> float:
    """Learning rate at fractional `epoch`: linear warm-up, then cosine or step decay."""
    if epoch < t.warmup_epochs:
        return t.lr * (epoch + 1e-3) / t.warmup_epochs
    if t.schedule == "cosine":
        return 0.5 * t.lr * (1 + math.cos(math.pi * epoch / t.epochs))
    return t.lr * t.lr_decay ** sum(epoch >= s for s in t.lr_steps)


def check_inits(stage: str, cfg: StageConfig) -> None:
    """ML/MML models need different starting points, else equal models have zero KL (§3.4)."""
    if cfg.method not in ("ml", "mml"):
        return
    starts = [(m.modality, m.init) for m in cfg.models]
    repeated = sorted({s for s in starts if starts.count(s) > 1 and s[1] != "scratch"})
    if repeated:
        raise ConfigError(
            f"stages.{stage}: {cfg.method} models {', '.join(f'{m} from {i}' for m, i in repeated)}"
            " appear twice; identical models have zero mutual KL (paper §3.4) — initialise each "
            "from a different model (e.g. rgb_ce.0 and rgb_ce.1) or use scratch."
        )


def load_teacher(
    checkpoints: Path, ref: str, num_classes: int, stage: str
) -> tuple[torch.nn.Module, str]:
    """The frozen MARS/D3D teacher `<stage>.<k>`: eval mode, no gradients; and its modality."""
    path = artifacts.checkpoint_path(checkpoints, ref)
    if not path.exists():
        raise ConfigError(
            f"stages.{stage}.teacher={ref!r}: {path} does not exist; "
            f"train stage {ref.rsplit('.', 1)[0]!r} first."
        )
    model, meta = model_from_checkpoint(path)
    if meta["num_classes"] != num_classes:
        raise ConfigError(
            f"stages.{stage}.teacher={ref!r} predicts {meta['num_classes']} classes, "
            f"the dataset has {num_classes}."
        )
    model.requires_grad_(False)
    return model.eval(), meta["modality"]
