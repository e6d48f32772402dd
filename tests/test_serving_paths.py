"""What a served model accepts (mml.serving): regular files under MML_SERVE_ROOTS only,
base64 bytes within the size limit, and its limits read from the environment."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mml.data.live import LimitExceeded, Limits
from mml.serving import (
    MAX_BYTES,
    MAX_PIXELS,
    TIMEOUT,
    PathNotAllowed,
    ServeLimits,
    _requests,
    allowed_file,
    decode_b64,
    serve_roots,
)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.webm").write_bytes(b"video bytes")
    (outside / "secret.webm").write_bytes(b"private")
    (root / "out-link.webm").symlink_to(outside / "secret.webm")
    (root / "in-link.webm").symlink_to(root / "sub" / "a.webm")
    os.mkfifo(root / "fifo.webm")
    return {"root": root, "outside": outside}


def test_regular_files_under_a_root_are_allowed_resolved(tree):
    roots = serve_roots(f"{tree['root']}{os.pathsep}")
    assert roots == [tree["root"].resolve()]
    file = (tree["root"] / "sub" / "a.webm").resolve()
    assert allowed_file(str(tree["root"] / "sub" / "a.webm"), roots) == file
    assert allowed_file(str(tree["root"] / "sub" / ".." / "sub" / "a.webm"), roots) == file
    assert allowed_file(str(tree["root"] / "in-link.webm"), roots) == file
    with pytest.raises(FileNotFoundError):  # inside a root, the client may learn it is missing
        allowed_file(str(tree["root"] / "missing.webm"), roots)


@pytest.mark.parametrize(
    "name",
    ["passwd", "traversal", "symlink out", "fifo", "directory", "dev zero", "missing outside"],
)
def test_everything_else_is_refused_alike_and_at_once(tree, name):
    root = tree["root"]
    path = {
        "passwd": "/etc/passwd",
        "traversal": f"{root}/sub/../../outside/secret.webm",
        "symlink out": f"{root}/out-link.webm",
        "fifo": f"{root}/fifo.webm",  # opening it would block: refused before any open
        "directory": f"{root}/sub",
        "dev zero": "/dev/zero",  # under the root /dev below: not a regular file
        "missing outside": f"{tree['outside']}/nothing.webm",
    }[name]
    roots = serve_roots(f"{root}{os.pathsep}/dev")
    with pytest.raises(PathNotAllowed) as refused:
        allowed_file(path, roots)
    assert str(refused.value) == "path not allowed"  # nothing about existence


def test_no_roots_allow_nothing(tree):
    assert serve_roots(None) == [] and serve_roots("") == []
    with pytest.raises(PathNotAllowed):
        allowed_file(str(tree["root"] / "sub" / "a.webm"), [])


def test_base64_is_decoded_whitespace_ignored():
    data = np.random.default_rng(0).integers(0, 256, 1000, np.uint8).tobytes()
    text = base64.b64encode(data).decode()
    assert decode_b64(text, None) == data
    assert decode_b64("\n".join(text[i : i + 76] for i in range(0, len(text), 76)), 1000) == data
    for bad in ("not base64!", text[:-1], "ab=c"):
        with pytest.raises(ValueError, match="not valid base64"):
            decode_b64(bad, None)


def test_base64_over_the_limit_is_refused_before_decoding():
    data = bytes(1001)
    with pytest.raises(ValueError, match="1001 bytes, over the limit of 1000"):
        decode_b64(base64.b64encode(data).decode(), 1000)
    # the size is read off the text's length: a huge value is refused without decoding it
    huge = "A" * (400 * 2**20)  # 300 MiB once decoded
    start = time.perf_counter()
    with pytest.raises(ValueError, match="over the limit"):
        decode_b64(huge, 256 * 2**20)
    assert time.perf_counter() - start < 1.0


def test_limits_come_from_the_environment_and_name_a_bad_value():
    assert ServeLimits.from_env({}) == ServeLimits(256 * 2**20, 60.0, 4096 * 4096)
    got = ServeLimits.from_env({MAX_BYTES: "1000", TIMEOUT: "0.5", MAX_PIXELS: " "})
    assert got == ServeLimits(1000, 0.5, 4096 * 4096)
    for name, value in [(MAX_BYTES, "1.5"), (TIMEOUT, "-1"), (TIMEOUT, "nan"), (MAX_PIXELS, "x")]:
        with pytest.raises(ValueError, match=f"{name}='{value}'"):
            ServeLimits.from_env({name: value})


def test_a_video_limits_clock_and_frame_size():
    Limits().check_time()  # no limit
    Limits(max_pixels=64 * 64).check_frame(64, 64)
    with pytest.raises(LimitExceeded, match="65x64 are over the limit of 4096 pixels"):
        Limits(max_pixels=64 * 64).check_frame(64, 65)
    limits = Limits(seconds=0.05)
    limits.check_time()
    time.sleep(0.06)
    with pytest.raises(LimitExceeded, match=r"time limit exceeded \(0.05 s per video\)"):
        limits.check_time()


def test_rows_give_a_path_or_bytes():
    table = pd.DataFrame.from_records(
        [{"video": "/a.webm"}, {"video_b64": "QUJD"}, {"video": "/b.webm", "video_b64": "QUJD"}, {}]
    )
    assert _requests(table) == [
        ("/a.webm", None),
        (None, "QUJD"),
        ("/b.webm", "QUJD"),
        (None, None),
    ]
    assert _requests(pd.DataFrame({"video_b64": ["QUJD", ""]})) == [(None, "QUJD"), (None, None)]
    assert _requests("/a.webm") == [("/a.webm", None)]
    with pytest.raises(ValueError, match="'video' .* or 'video_b64'"):
        _requests(pd.DataFrame({"path": ["/a.webm"]}))


def test_mml_serve_refuses_a_malformed_limit_before_starting(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mml.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TIMEOUT, "soon")
    result = CliRunner().invoke(app, ["serve", "--model", "models:/m@champion"])
    assert result.exit_code == 2 and "MML_SERVE_TIMEOUT='soon'" in result.output
