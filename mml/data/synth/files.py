"""The synthetic datasets on disk: out_dir/videos/<n>.webm (.mp4 for h264), annotations, spec.json.

spec.json is written last and only describes a complete directory. A run first reads and
removes it: when it equals the run's record, existing videos are kept (every file is written
atomically, so an existing one is whole); otherwise every video is redrawn.
"""

from __future__ import annotations

import json
from pathlib import Path

from mml.config import SynthConfig
from mml.data.video import suffix_for
from mml.fsio import atomic_write_text, remove_temp_files

VIDEO_DIR = "videos"
SPEC_FILE = "spec.json"


def settings_record(spec: SynthConfig) -> dict:
    """The settings both generators record in spec.json (not the Charades-like variant's),
    in SynthConfig's field order."""
    return spec.model_dump(mode="json", exclude={"multilabel", "actions"})


def start_output(out_dir: Path, record: dict) -> bool:
    """Create out_dir/videos; return whether its videos can be kept (spec.json == `record`).

    Removes spec.json: until this run completes (`finish_output`), the directory is unverified.
    """
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / SPEC_FILE
    keep = spec_path.exists() and json.loads(spec_path.read_text()) == record
    spec_path.unlink(missing_ok=True)
    return keep


def video_paths(out_dir: Path, count: int, codec: str) -> list[Path]:
    """The files of videos 1..count."""
    suffix = suffix_for(codec)
    return [out_dir / VIDEO_DIR / f"{n}{suffix}" for n in range(1, count + 1)]


def remove_stale(out_dir: Path, paths: list[Path]) -> None:
    """Delete videos not in `paths` (of a larger earlier spec) and temp files of a killed run."""
    video_dir = out_dir / VIDEO_DIR
    remove_temp_files(video_dir)
    for stale in {*video_dir.glob("*.webm"), *video_dir.glob("*.mp4")} - set(paths):
        stale.unlink()


def finish_output(out_dir: Path, record: dict) -> None:
    """Write spec.json: the directory is complete and was made from `record`."""
    atomic_write_text(out_dir / SPEC_FILE, json.dumps(record, indent=1) + "\n")
