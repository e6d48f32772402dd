"""What a training stage keeps on disk: its fingerprint, `<k>.pt` per model, `last.pt`, curves.

`<k>.pt` is a model's weights and metadata (what evaluate, ensembles and promote read);
`last.pt` is everything a resumed run needs (weights, optimizer states, MLflow run ids,
metric history) and the fingerprint of the configuration that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mml import artifacts, checkpoint, fsio
from mml.config import Params, StageConfig

log = logging.getLogger(__name__)

# What a stage's training reads from params besides its own `stages.<name>` entry. The
# fingerprint below hashes exactly these, and every `train` stage of a dvc.yaml lists exactly
# these (plus `stages.<name>`) as its `params:` (tests/test_dvc_yaml.py checks every pipeline).
# `loader.workers` and the rest of `compute` only change how fast the same result comes.
TRAINING_PARAMS: tuple[str, ...] = (
    "seed",
    "dataset",
    "synth",
    "clip",
    "cache",
    "loader.batch_size",
    "model",
    "train",
    "compute.precision",
)


def training_values(params: Params) -> dict[str, Any]:
    """The values of `TRAINING_PARAMS` in `params`, by dotted key."""
    tree = params.model_dump(mode="json")
    values = {}
    for key in TRAINING_PARAMS:
        value = tree
        for part in key.split("."):
            value = value[part]
        values[key] = value
    return values


def _trains(key: str) -> bool:
    """Whether a dotted params key is, holds or lies inside one of `TRAINING_PARAMS`."""
    return any(
        key == t or key.startswith(f"{t}.") or t.startswith(f"{key}.") for t in TRAINING_PARAMS
    )


def fingerprint(params: Params, cfg: StageConfig) -> str:
    """Hash of everything that shapes a stage's training (resume must match it).

    `params` are the stage's own (overrides applied). The hashes of the checkpoints the
    stage starts from or learns from are part of it: a retrained parent means start over.
    """
    stage = cfg.model_dump(mode="json")
    # the stage's own overrides count as far as they reach training (already in `params`);
    # an `evaluate.*` or `loader.workers` override changes how it is tested or how fast
    stage["overrides"] = {k: v for k, v in stage["overrides"].items() if _trains(k)}
    data = {"params": training_values(params), "stage": stage}
    refs = {m.init for m in cfg.models if m.init not in ("scratch", "imagenet")}
    if cfg.teacher:
        refs.add(cfg.teacher)
    data["sources"] = {
        ref: fsio.file_hash(artifacts.checkpoint_path(params.paths.checkpoints, ref))
        for ref in sorted(refs)
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SavedModel:
    """One model of a stage as it is saved: weights, optimizer, metadata, metric history."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    meta: dict
    history: list[dict[str, float]]


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fresh `state_dict()` with its tensors on the CPU (a GPU run's checkpoint loads
    anywhere); in place, so the OrderedDict keeps its version metadata."""
    for key, value in state.items():
        state[key] = value.detach().cpu()
    return state


def save(
    out_dir: Path,
    models: Sequence[SavedModel],
    *,
    fingerprint: str,
    epochs_done: int,
    parent_run_id: str,
    scaler: dict | None = None,
) -> None:
    """Write `<k>.pt` for every model, then `last.pt` (each atomically); `scaler` is the fp16
    loss scaler's state (mixed precision), resumed with the rest."""
    for k, m in enumerate(models):
        checkpoint.save(
            artifacts.stage_checkpoint(out_dir, k),
            {"format": 1, "state_dict": _cpu(m.model.state_dict()), "meta": m.meta},
        )
    checkpoint.save(
        artifacts.last_checkpoint(out_dir),
        {
            "format": 1,
            "fingerprint": fingerprint,
            "epoch": epochs_done,
            "parent_run_id": parent_run_id,
            "scaler": scaler,
            "members": [
                {
                    "model": _cpu(m.model.state_dict()),
                    "optimizer": m.optimizer.state_dict(),
                    "run_id": m.meta["run_id"],
                    "history": m.history,
                }
                for m in models
            ],
        },
    )


def saved_state(out_dir: Path, digest: str, stage: str, *, strict: bool) -> dict | None:
    """last.pt's content if it exists and was written by the configuration `digest`.

    A last.pt of another configuration is an error when `strict`, else ignored (start over).
    """
    path = artifacts.last_checkpoint(out_dir)
    if not path.exists():
        return None
    state = checkpoint.load(path)
    if state.get("fingerprint") == digest:
        return state
    if strict:
        raise checkpoint.CheckpointError(
            f"{path} was written with other params (or init/teacher checkpoints) for stage "
            f"{stage!r}; pass --restart to train from scratch (the old checkpoint is replaced)."
        )
    log.info("%s: inputs changed since %s was written; starting over", stage, path)
    return None


def write_curves(curves_dir: Path, histories: Sequence[tuple[int, list[dict[str, float]]]]) -> None:
    """<curves_dir>/<k>.csv: one row per epoch (DVC plots; `/` in names -> `_`); a value an
    epoch does not have (validation only every `train.val_every` epochs) is left empty."""
    for index, history in histories:
        keys = list(dict.fromkeys(k for row in history for k in row))
        lines = [",".join(["epoch", *(k.replace("/", "_") for k in keys)])]
        for epoch, row in enumerate(history, start=1):
            lines.append(
                ",".join([str(epoch), *(f"{row[k]:.6g}" if k in row else "" for k in keys)])
            )
        fsio.atomic_write_text(curves_dir / f"{index}.csv", "\n".join(lines) + "\n")
