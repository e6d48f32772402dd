"""Checkpoint files: atomic writes and safe (`weights_only=True`) loads with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mml.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or not what the caller expected."""


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, payload: dict[str, Any]) -> None:
    """torch.save `payload` (tensors and plain Python values only) atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


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
