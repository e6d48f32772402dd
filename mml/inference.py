"""Prediction: a stage's models on the test views of a dataset, views fused per video.

What validation during training, `mml evaluate` and the served model share: `fuse_views` (one
batch of views through a model), `predict_dataset` (every video, optionally one process's
share) and `merge_predictions` (the shares back in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mml.config import LoaderConfig
from mml.data.dataset import KeptBatches, make_loader
from mml.progress import progress_bar


@dataclass(frozen=True)
class Prediction:
    """Fused class probabilities of one model for every (decodable) video."""

    scores: np.ndarray
    targets: np.ndarray
    ids: list[str]


@dataclass(frozen=True)
class Predictions:
    members: list[Prediction]
    skipped: list[str]


@torch.no_grad()
def predict_dataset(
    models: Sequence[torch.nn.Module],
    modalities: Sequence[str],
    dataset,
    loader: LoaderConfig,
    *,
    batch_size: int,
    fuse: str,
    label: str = "predict",
    show_progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    batches: KeptBatches | None = None,
) -> Predictions:
    """Run each model on its modality of every test view; fuse views (logits or probs).

    With `world_size` > 1, only process `rank`'s contiguous part of the dataset
    (`merge_predictions` of every rank's result, in rank order, is the whole). `batches`: the
    dataset's batches kept from an earlier pass (`val_batches`), instead of a new loader.
    """
    multilabel = dataset.multilabel
    for model in models:
        model.eval()
    if batches is None:
        batches = val_batches(dataset, loader, batch_size, rank, world_size, budget=0)
    scores: list[list[np.ndarray]] = [[] for _ in models]
    targets, ids, skipped = [], [], []
    with progress_bar(label, len(batches), show_progress) as advance:
        for batch in batches:
            skipped += batch.skipped
            if batch.ids:
                for out, model, modality in zip(scores, models, modalities, strict=True):
                    out.append(fuse_views(model, batch.inputs[modality], fuse, multilabel))
                targets.append(batch.targets.numpy())
                ids += batch.ids
            advance()
    target_array = np.concatenate(targets) if targets else np.empty(0, dtype=np.int64)
    members = [
        Prediction(np.concatenate(s) if s else np.empty((0, 0)), target_array, ids) for s in scores
    ]
    return Predictions(members, skipped)


def val_batches(
    dataset, loader: LoaderConfig, batch_size: int, rank: int, world_size: int, *, budget: int
) -> KeptBatches:
    """Process `rank`'s unshuffled batches of `dataset`, kept in memory up to `budget` bytes."""

    def make():
        return make_loader(
            dataset,
            loader,
            shuffle=False,
            seed=0,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
        )

    return KeptBatches(make, budget)


def merge_predictions(parts: Sequence[Predictions]) -> Predictions:
    """One `Predictions` from the parts of consecutive slices of a dataset (in order)."""
    members = []
    for k in range(len(parts[0].members)):
        pieces = [p.members[k] for p in parts if p.members[k].ids]
        if not pieces:
            members.append(parts[0].members[k])
            continue
        members.append(
            Prediction(
                np.concatenate([p.scores for p in pieces]),
                np.concatenate([p.targets for p in pieces]),
                [i for p in pieces for i in p.ids],
            )
        )
    return Predictions(members, [s for p in parts for s in p.skipped])


def fuse_views(model: torch.nn.Module, x: torch.Tensor, fuse: str, multilabel: bool) -> np.ndarray:
    """x: (B, V, T, C, H, W) -> (B, K) probabilities, averaging logits or probabilities."""
    b, v = x.shape[:2]
    param = next(model.parameters())
    logits = model(x.flatten(0, 1).to(param.device, param.dtype)).view(b, v, -1)
    activate = torch.sigmoid if multilabel else (lambda z: torch.softmax(z, dim=-1))
    if fuse == "logits":
        return activate(logits.mean(dim=1)).cpu().numpy()
    return activate(logits).mean(dim=1).cpu().numpy()
