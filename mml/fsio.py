"""Atomic file writes: write a temp file beside the target, fsync, rename over it.

Readers (and a re-run after `kill -9`) never see half a file: either the old one or the new.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # atomic_write's temp files: .<name>.<random>.tmp beside the target


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` for a temp file in `path`'s directory, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temp_files(directory: Path, targets: Iterable[str] | None = None) -> int:
    """Delete the temp files that killed `atomic_write` calls left in `directory`; how many.

    With `targets` (file names), only the temp files of those targets: other writers of the
    directory (another shard of a build) keep theirs.
    """
    names = None if targets is None else set(targets)
    removed = 0
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        if names is not None and tmp.name[1:].rsplit(".", 2)[0] not in names:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write `text` as UTF-8 (newlines as given)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


def file_hash(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256 (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) across processes on this host."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sqlite_init_lock(url: str) -> contextlib.AbstractContextManager:
    """For a sqlite:/// URL, a lock beside the database file (several processes creating its
    tables at once fail); for other URLs, nothing (their servers serialise that)."""
    if not url.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return file_lock(Path(url.removeprefix("sqlite:///") + ".init-lock"))
