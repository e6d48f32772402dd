"""The MLflow pyfunc of mml's registered models ("models from code": MLflow runs this file).

Input: the paths of video files, as a DataFrame column `video` (what `mlflow models serve`
receives as `{"dataframe_records": [{"video": "/path/a.mp4"}]}`), a list or one string.
Optional param `top_k` (default 5). Output: one row per video with `label`, `score`,
`top_labels`, `top_scores` and `error`: "" or, with label "" and score 0, why the file could
not be decoded (the other videos of the request are still predicted).

Paths are a server's files, so a served model reads only regular files under the directories
listed in ``MML_SERVE_ROOTS`` (``:``-separated; unset or empty: no path at all). A path is
resolved first (symlinks followed, ``..`` removed); one that lands outside every root, or on
anything but a regular file (a directory, a FIFO, a device), gets the error "path not allowed",
the same whether or not it exists. `mml predict` on the command line reads the files its user
names (:meth:`MMLVideoModel.read_any_path`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from mml.data.video import VideoDecodeError
from mml.predictor import VideoPredictor

SERVE_ROOTS = "MML_SERVE_ROOTS"


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
    # (a `video` string column) validates the input, and hint-based conversion would not.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.predictor = VideoPredictor(Path(context.artifacts["package"]))
        # None: any path (the command line); else only files under these roots (serving)
        self.roots: list[Path] | None = serve_roots(os.environ.get(SERVE_ROOTS))

    def read_any_path(self) -> None:
        """Read every path as given: for `mml predict`, whose user names the files."""
        self.roots = None

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k", 5))
        rows = []
        for video in _videos(model_input):
            try:
                path = video if self.roots is None else allowed_file(video, self.roots)
                top = self.predictor.top(self.predictor.predict(path), top_k)
            except (VideoDecodeError, ValueError, OSError) as err:
                rows.append(
                    {
                        "video": video,
                        "label": "",
                        "score": 0.0,
                        "top_labels": [],
                        "top_scores": [],
                        "error": str(err),
                    }
                )
                continue
            rows.append(
                {
                    "video": video,
                    "label": top[0][0],
                    "score": top[0][1],
                    "top_labels": [c for c, _ in top],
                    "top_scores": [p for _, p in top],
                    "error": "",
                }
            )
        return pd.DataFrame(
            rows, columns=["video", "label", "score", "top_labels", "top_scores", "error"]
        )


def _videos(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "video" not in model_input.columns:
            raise ValueError(f"expected a column 'video' of file paths, got {list(model_input)}")
        return [str(v) for v in model_input["video"]]
    if isinstance(model_input, str | Path):
        return [str(model_input)]
    return [str(v) for v in model_input]


mlflow.models.set_model(MMLVideoModel())
