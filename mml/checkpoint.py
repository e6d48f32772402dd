"""Checkpoint files: atomic writes and safe (`weights_only=True`) loads with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mml.errors import UserError
from mml.fsio import atomic_write


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or not what the caller expected."""


def save(path: Path, payload: dict[str, Any]) -> None:
    """torch.save `payload` (tensors and plain Python values only) atomically.

    If the write fails (e.g. the disk is full) the previous file at `path` is left intact.
    """
    try:
        atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))
    except OSError as err:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {err.strerror or err}; the previous checkpoint "
            "there (if any) is intact. Free space and run the same command again to resume."
        ) from None


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train the stage first).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not an mml checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); delete it and retrain."
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"checkpoint {path} is not an mml checkpoint (no 'format' key).")
    return payload
