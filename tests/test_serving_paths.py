"""Which paths a served model reads: regular files under MML_SERVE_ROOTS only (mml.serving)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mml.serving import PathNotAllowed, allowed_file, serve_roots


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
