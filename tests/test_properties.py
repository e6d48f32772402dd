"""Property-based tests (hypothesis): bad params and annotation files give clear errors, never
tracebacks; ids cannot leave the data root; class names survive write/read round trips."""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mml import checkpoint
from mml.cli import app
from mml.config import ConfigError, Params, load_params
from mml.data.annotations import (
    AnnotationError,
    read_charades,
    read_csv,
    read_ssv2,
    write_charades,
    write_ssv2,
)

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
KNOWN_KEYS = sorted(Params().flat())  # every real dotted key, e.g. train.lr
yaml_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(
        st.text(string.ascii_lowercase, min_size=1, max_size=5), st.integers(), max_size=2
    ),
)
keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(KNOWN_KEYS).map(lambda k: k + "x"),  # a typo
    st.text(string.ascii_lowercase + "._", min_size=1, max_size=20),
)


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("params")
    path = root / "params.yaml"
    paths = {name: str(root / name) for name in ("checkpoints", "metrics", "predictions", "plots")}
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": {"name": "x"},
                "paths": paths,
                "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"},
            }
        )
    )
    return path


@FAST
@given(key=keys, value=yaml_values)
def test_any_override_is_accepted_or_refused_with_the_key_named(params_file, key, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        load_params(params_file, [f"{key}={text}"])
    except ConfigError as err:
        message = str(err)
        assert str(params_file) in message or "override" in message
        assert key.split(".")[0] in message or "invalid" in message


@FAST
@given(key=keys, value=yaml_values)
def test_the_cli_never_shows_a_traceback_for_bad_params(params_file, key, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    with contextlib.chdir(params_file.parent):  # relative paths must not reach a real project
        result = CliRunner().invoke(app, ["ensemble", "-p", "params.yaml", "-S", f"{key}={text}"])
    assert result.exit_code == 2, result.output  # bad params, or (valid) no predictions yet
    assert "Traceback" not in result.output and "error:" in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["id", "template", "label", "x"]), inner, max_size=3),
    ),
    max_leaves=12,
)


@FAST
@given(labels=json_like, split=json_like, raw=st.binary(max_size=40))
def test_any_ssv2_files_read_or_fail_with_the_file_named(tmp_path_factory, labels, split, raw):
    root = tmp_path_factory.mktemp("ssv2")
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "split.json").write_text(json.dumps(split))
    (root / "raw.json").write_bytes(raw)
    for split_file in ("split.json", "raw.json"):
        try:
            ann = read_ssv2(root / "labels.json", root / split_file, root / "videos")
        except AnnotationError as err:
            assert str(root) in str(err)
            continue
        for record in ann.records:  # whatever was accepted stays inside the video directory
            assert record.path.parent == root / "videos"


@FAST
@given(text=st.text(max_size=200), classes=st.text(max_size=60), raw=st.binary(max_size=60))
def test_any_charades_or_csv_files_read_or_fail_with_the_file_named(
    tmp_path_factory, text, classes, raw
):
    root = tmp_path_factory.mktemp("csv")
    (root / "split.csv").write_text(text, encoding="utf-8")
    (root / "classes.txt").write_text(classes, encoding="utf-8")
    (root / "raw.csv").write_bytes(raw)
    for split in ("split.csv", "raw.csv"):
        for read in (
            lambda f: read_charades(f, root / "classes.txt", root / "videos"),
            lambda f: read_csv(f, root / "videos"),
        ):
            try:
                ann = read(root / split)
            except AnnotationError as err:
                assert str(root) in str(err)
                continue
            for record in ann.records:
                assert (root / "videos") in record.path.parents


escaping = st.sampled_from(["..", "../x", "a/../../b", "/etc/passwd", "a/b", "..\\x", "x\0y"])


@FAST
@given(bad=escaping)
def test_ids_that_would_leave_the_data_root_are_refused(tmp_path_factory, bad):
    root = tmp_path_factory.mktemp("escape")
    write_ssv2(
        ["a"],
        [{"id": bad, "template": "a", "label": "x", "placeholders": []}],
        root / "labels.json",
        root / "val.json",
    )
    with pytest.raises(AnnotationError, match="escapes the data root"):
        read_ssv2(root / "labels.json", root / "val.json", root / "videos")
    write_charades(["a"], [{"id": bad, "actions": [(0, 0.0, 1.0)]}], root / "s.csv", root / "c.txt")
    with pytest.raises(AnnotationError, match="escapes the data root|empty or repeated"):
        read_charades(root / "s.csv", root / "c.txt", root / "videos")


class_names = st.lists(
    st.text(
        st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"], blacklist_characters="[]"),
        min_size=1,
        max_size=16,
    )
    .map(str.strip)
    .filter(bool),
    min_size=1,
    max_size=5,
    unique=True,
)


@FAST
@given(names=class_names)
def test_unicode_and_comma_class_names_survive_round_trips(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("names")
    entries = [
        {"id": str(i), "template": n, "label": n, "placeholders": []} for i, n in enumerate(names)
    ]
    write_ssv2(names, entries, root / "labels.json", root / "val.json")
    ann = read_ssv2(root / "labels.json", root / "val.json", root / "videos")
    assert ann.classes == tuple(names)
    assert [r.labels for r in ann.records] == [(i,) for i in range(len(names))]
    rows = [{"id": f"v{i}", "actions": [(i, 0.0, 1.5)]} for i in range(len(names))]
    write_charades(names, rows, root / "s.csv", root / "c.txt")
    ann = read_charades(root / "s.csv", root / "c.txt", root / "videos")
    assert ann.classes == tuple(names)
    assert [r.labels for r in ann.records] == [(i,) for i in range(len(names))]


def test_checkpoints_refuse_arbitrary_pickled_objects(tmp_path):
    """A checkpoint that would run code when unpickled is refused, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": Path("/etc/passwd")}, path)  # any non-tensor object
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or not an mml checkpoint"):
        checkpoint.load(path)
