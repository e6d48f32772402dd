"""The `mml` process's exit: a normal exit's effects without Python's module teardown."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path
from mml.cli import exit_now

out = Path(sys.argv[1])
def late_writer():
    time.sleep(0.3)
    (out / "thread").write_text("joined")
threading.Thread(target=late_writer).start()
atexit.register(lambda: (out / "atexit").write_text("ran"))
sys.stdout.write("unflushed")
exit_now({code})
"""


@pytest.mark.parametrize(("code", "status"), [("0", 0), ("None", 0), ("3", 3), ("'boom'", 1)])
def test_exit_now_runs_what_exit_runs(tmp_path: Path, code: str, status: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM.format(code=code)), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stderr
    assert done.stdout == "unflushed"  # buffered output is not lost
    assert (tmp_path / "thread").read_text() == "joined"  # non-daemon threads finish first
    assert (tmp_path / "atexit").read_text() == "ran"
    if code == "'boom'":
        assert done.stderr.strip() == "boom"


@pytest.mark.slow
def test_console_script_exit_status() -> None:
    """`python -m mml` goes through the same exit: a user error is still status 2."""
    done = subprocess.run(
        [sys.executable, "-m", "mml", "evaluate", "x", "-p", "no-such-params.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "no-such-params.yaml" in done.stderr
