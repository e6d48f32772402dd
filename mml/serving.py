"""The MLflow pyfunc of mml's registered models ("models from code": MLflow runs this file).

Input: the paths of video files, as a DataFrame column `video` (what `mlflow models serve`
receives as `{"dataframe_records": [{"video": "/path/a.mp4"}]}`), a list or one string.
Optional param `top_k` (default 5). Output: one row per video with `label`, `score`,
`top_labels`, `top_scores` and `error`: "" or, with label "" and score 0, why the file could
not be decoded (the other videos of the request are still predicted).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from mml.data.video import VideoDecodeError
from mml.predictor import VideoPredictor


class MMLVideoModel(PythonModel):
    """Wraps mml.predictor.VideoPredictor over the package in the `package` artifact."""

    # No type-hint wrapping of `predict` (and no warning asking for hints): the signature
    # (a `video` string column) validates the input, and hint-based conversion would not.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:

        self.predictor = VideoPredictor(Path(context.artifacts["package"]))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:

        top_k = int((params or {}).get("top_k", 5))
        rows = []
        for video in _videos(model_input):
            try:
                top = self.predictor.top(self.predictor.predict(video), top_k)
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
