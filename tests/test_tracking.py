"""mml.tracking: the names in the MLflow store."""

from __future__ import annotations

from mml import tracking
from mml.config import Params


def test_names_in_the_store_stay_as_they_are():
    """Existing stores, saved `mlflow ui` searches and serving URIs depend on these strings."""
    params = Params.model_validate({"dataset": {"name": "ssv2"}})
    assert tracking.Tag.ROLE == "mml.role" and tracking.Tag.STUDY == "mml.study"
    assert tracking.Tag.PARENT_RUN == "mlflow.parentRunId"
    assert [tracking.Role.STAGE, tracking.Role.MODEL, tracking.Role.STUDY] == [
        "stage",
        "model",
        "study",
    ]
    assert tracking.registered_model_name(params, "ensemble") == "mml-ssv2-ensemble"
    assert tracking.champion_uri(params) == "models:/mml-ssv2-rgb@champion"
    assert tracking.VersionTag.FINGERPRINT == "mml.fingerprint"
    assert tracking.VersionTag.val("top1") == "val.top1"
    assert tracking.versions_filter("mml-ssv2-rgb") == "name = 'mml-ssv2-rgb'"
    assert tracking.study_filter("mml-ssv2-mml") == (
        "tags.`mml.role` = 'study' and tags.`mml.study` = 'mml-ssv2-mml'"
    )
    assert tracking.trial_tags("s", 3) == {"mml.trial": "3", "mml.study": "s"}
