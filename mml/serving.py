"""The MLflow pyfunc of mml's registered models ("models from code": MLflow runs this file).

Input: a DataFrame (what `mlflow models serve` receives as `{"dataframe_records": [...]}`)
with, in each row, either `video`, the path of a video file on the server, or `video_b64`,
the file's bytes in base64 (standard alphabet, whitespace ignored); or a list of paths, or one
path. Optional param `top_k` (default 5). Output: one row per input row, in order, with
`video` (the path, "" for bytes), `label`, `score`, `top_labels`, `top_scores` and `error`:
"" or, with label "" and score 0, why that video got no prediction (the request's other
videos are still predicted).

Bytes are decoded in memory (mml.data.video.VideoBytes): no file is written. A served model
bounds what one video may cost (environment variables, read when the model loads; `mml serve`
sets them from its options):

- ``MML_SERVE_MAX_BYTES``: decoded size of a `video_b64` value (default 256 MiB), checked
  before it is decoded;
- ``MML_SERVE_TIMEOUT``: seconds of work per video (default 60), checked before every decode,
  flow field and network pass (mml.data.live.Limits);
- ``MML_SERVE_MAX_PIXELS``: pixels per frame (default 4096 x 4096), checked before decoding.

Paths are a server's files, so a served model reads only regular files under the directories
listed in ``MML_SERVE_ROOTS`` (``:``-separated; unset or empty: no path at all). A path is
resolved first (symlinks followed, ``..`` removed); one that lands outside every root, or on
anything but a regular file (a directory, a FIFO, a device), gets the error "path not allowed",
the same whether or not it exists. `mml predict` on the command line reads the files its user
names, with no limits (:meth:`MMLVideoModel.for_command_line`).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from mml.data.live import Limits
from mml.data.video import VideoBytes, VideoDecodeError
from mml.predictor import VideoPredictor

SERVE_ROOTS = "MML_SERVE_ROOTS"
MAX_BYTES = "MML_SERVE_MAX_BYTES"
TIMEOUT = "MML_SERVE_TIMEOUT"
MAX_PIXELS = "MML_SERVE_MAX_PIXELS"
DEFAULTS = {MAX_BYTES: 256 * 2**20, TIMEOUT: 60.0, MAX_PIXELS: 4096 * 4096}
COLUMNS = ["video", "label", "score", "top_labels", "top_scores", "error"]


@dataclass(frozen=True)
class ServeLimits:
    """A served model's limits per video (module docstring); None: no limit."""

    max_bytes: int | None
    seconds: float | None
    max_pixels: int | None

    @classmethod
    def from_env(cls, env) -> ServeLimits:
        """From the environment; a malformed value is an error naming the variable."""

        def number(name: str, kind: type):
            raw = env.get(name, "")
            if not raw.strip():
                return kind(DEFAULTS[name])
            try:
                value = kind(raw)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={raw!r}: expected a positive number")
            return value

        return cls(number(MAX_BYTES, int), number(TIMEOUT, float), number(MAX_PIXELS, int))

    def for_video(self) -> Limits:
        """Limits of one video, its clock starting now."""
        return Limits(seconds=self.seconds, max_pixels=self.max_pixels)


NO_LIMITS = ServeLimits(None, None, None)


class PathNotAllowed(ValueError):
    """A requested path outside the allowed roots, or not a regular file."""

    def __init__(self) -> None:
        super().__init__("path not allowed")


def serve_roots(value: str | None) -> list[Path]:
    """The allowed roots of a ``MML_SERVE_ROOTS`` value, resolved; none when unset or empty."""
    return [Path(part).resolve() for part in (value or "").split(os.pathsep) if part.strip()]


def allowed_file(video: str, roots: list[Path]) -> Path:
    """`video` resolved, if it is a regular file under one of `roots`; else PathNotAllowed.

    The answer does not depend on whether a path outside the roots exists. Missing files under
    a root raise FileNotFoundError (the client may look there)."""
    try:
        resolved = Path(video).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        raise PathNotAllowed() from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PathNotAllowed()
    mode = os.stat(resolved).st_mode  # FileNotFoundError under a root is the client's to see
    if not stat.S_ISREG(mode):  # a directory, FIFO or device would hang or make no sense
        raise PathNotAllowed()
    return resolved


class MMLVideoModel(PythonModel):
    """Wraps mml.predictor.VideoPredictor over the package in the `package` artifact."""

    # No type-hint wrapping of `predict` (and no warning asking for hints): the signature
    # (`video` and `video_b64` string columns) validates the input, and hints would not.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.predictor = VideoPredictor(Path(context.artifacts["package"]))
        # None: any path (the command line); else only files under these roots (serving)
        self.roots: list[Path] | None = serve_roots(os.environ.get(SERVE_ROOTS))
        self.limits = ServeLimits.from_env(os.environ)

    def for_command_line(self) -> None:
        """Read every path as given, without limits: `mml predict`, whose user names the files."""
        self.roots = None
        self.limits = NO_LIMITS

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k", 5))
        rows = []
        for index, (path, b64) in enumerate(_requests(model_input)):
            row = {"video": path or "", "label": "", "score": 0.0, "top_labels": []}
            row |= {"top_scores": [], "error": ""}
            try:
                source = self._source(index, path, b64)
                probabilities = self.predictor.predict(source, self.limits.for_video())
                top = self.predictor.top(probabilities, top_k)
            except (VideoDecodeError, ValueError, OSError) as err:
                row["error"] = str(err)
            else:
                row |= {"label": top[0][0], "score": top[0][1]}
                row |= {"top_labels": [c for c, _ in top], "top_scores": [p for _, p in top]}
            rows.append(row)
        return pd.DataFrame(rows, columns=COLUMNS)

    def _source(self, index: int, path: str | None, b64: str | None) -> Path | str | VideoBytes:
        """What row `index` asks to read: its checked path or its decoded bytes."""
        if path is not None and b64 is not None:
            raise ValueError("give either video (a path) or video_b64 (the file's bytes), not both")
        if b64 is not None:
            return VideoBytes(decode_b64(b64, self.limits.max_bytes), f"<video_b64 of row {index}>")
        if path is None:
            raise ValueError("no video: give video (a path) or video_b64 (the file's bytes)")
        return path if self.roots is None else allowed_file(path, self.roots)


def decode_b64(text: str, max_bytes: int | None) -> bytes:
    """The bytes of a base64 `text` (whitespace ignored), refused before decoding when they
    would exceed `max_bytes`."""
    compact = "".join(text.split())
    size = len(compact) // 4 * 3 - compact[-2:].count("=")
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"video_b64 is {size} bytes, over the limit of {max_bytes}")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"video_b64 is not valid base64 ({err})") from None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _requests(model_input) -> list[tuple[str | None, str | None]]:
    """(path, base64) of every row, None where a row has no value."""
    if isinstance(model_input, pd.DataFrame):
        wanted = [c for c in ("video", "video_b64") if c in model_input.columns]
        if not wanted:
            raise ValueError(
                "expected a column 'video' (file paths) or 'video_b64' (base64 file bytes), "
                f"got {list(model_input)}"
            )
        records = model_input[wanted].to_dict(orient="records")
        return [
            tuple(None if _missing(r.get(c)) else str(r[c]) for c in ("video", "video_b64"))
            for r in records
        ]
    if isinstance(model_input, str | Path):
        return [(str(model_input), None)]
    return [(str(v), None) for v in model_input]


mlflow.models.set_model(MMLVideoModel())
