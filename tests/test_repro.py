"""`mml repro`: DVC stages side by side, on a real DVC project of small stages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mml.errors import UserError
from mml.repro import STOP_SECONDS, chain_lengths, dvc_command, run_pipeline, upstream_closure

BIN = Path(sys.executable).parent

# a -> (b, c) -> d, and e alone; each stage records when its command started and ended
GRAPH = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": set()}


def test_upstream_closure_and_chain_lengths():
    assert upstream_closure(GRAPH, ["d"]) == {k: GRAPH[k] for k in "abcd"}
    assert upstream_closure(GRAPH, ["b"]) == {"a": set(), "b": {"a"}}
    foreach = {"s": set(), "t@x": {"s"}, "t@y": {"s"}, "tx": set()}
    assert set(upstream_closure(foreach, ["t"])) == {"s", "t@x", "t@y"}  # a foreach group
    with pytest.raises(UserError, match="no stage 'zz'"):
        upstream_closure(GRAPH, ["zz"])
    assert chain_lengths(GRAPH) == {"a": 3, "b": 2, "c": 2, "d": 1, "e": 1}


STAGE = (
    "import json, os, sys, time; start = time.time(); "
    "open('{name}.pid', 'w').write(str(os.getpid())); time.sleep({sleep}); "
    "sys.exit(3) if {fail} else None; "
    "json.dump([start, time.time()], open('{name}.json', 'w'))"
)


def project(root: Path, fail: str = "", slow: str = "") -> Path:
    """A real DVC project (no git) whose stages sleep, then write <name>.json; stage `slow`
    sleeps as many seconds as slow.txt says (not a dependency: DVC does not see it change)."""
    stages = {}
    for name, ups in GRAPH.items():
        sleep = "float(open('slow.txt').read())" if name == slow else 1.5
        code = STAGE.format(sleep=sleep, fail=name == fail, name=name)
        stages[name] = {
            "cmd": f'"{sys.executable}" -c "{code}"',
            "deps": [f"{up}.json" for up in sorted(ups)] or ["seed.txt"],
            "outs": [{f"{name}.json": {"cache": False}}],
        }
    root.mkdir()
    (root / "seed.txt").write_text("1")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def spans(root: Path, names: str) -> dict[str, tuple[float, float]]:
    return {n: tuple(json.loads((root / f"{n}.json").read_text())) for n in names}


def overlaps(x: tuple[float, float], y: tuple[float, float]) -> bool:
    return x[0] < y[1] and y[0] < x[1]


@pytest.mark.slow  # ~10 `dvc repro` processes
def test_independent_stages_run_side_by_side_and_dvc_agrees(tmp_path):
    root = project(tmp_path / "p")
    lines: list[str] = []
    runs = run_pipeline(root, jobs=2, echo=lines.append)
    assert sorted(r.name for r in runs) == sorted(GRAPH)
    assert all(r.returncode == 0 and r.ran for r in runs)
    t = spans(root, "abcde")
    for name, ups in GRAPH.items():  # every stage started after the ones it reads had ended
        assert all(t[up][1] <= t[name][0] for up in ups), (name, t)
    assert overlaps(t["b"], t["c"]), t  # the two branches ran at the same time
    at_once = [sum(s[0] <= start < s[1] for s in t.values()) for start, _ in t.values()]
    assert max(at_once) == 2, t  # never more than `jobs` stages at once
    assert any("[b]" in line for line in lines) and any("ran in" in line for line in lines)
    # DVC's own view: everything is up to date, and a second run changes nothing
    status = subprocess.run(
        [BIN / "dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=True
    )
    assert json.loads(status.stdout) == {}

    def no_process(name):
        raise AssertionError(f"{name}: a dvc repro for an unchanged stage")

    again = run_pipeline(root, jobs=2, echo=lambda _: None, command=no_process)
    assert sorted(r.name for r in again if not r.ran) == sorted(GRAPH)
    assert spans(root, "abcde") == t
    # an output deleted: that stage and what is below it run, nothing else starts a process
    (root / "c.json").unlink()
    started: list[str] = []

    def recorded(name):
        started.append(name)
        return dvc_command(name)

    third = run_pipeline(root, jobs=2, echo=lambda _: None, command=recorded)
    assert sorted(started) == ["c", "d"] and sorted(r.name for r in third if r.ran) == ["c", "d"]


@pytest.mark.slow
def test_one_job_runs_one_stage_at_a_time_and_targets_limit_the_run(tmp_path):
    root = project(tmp_path / "p")
    runs = run_pipeline(root, targets=["b"], jobs=1, echo=lambda _: None)
    assert sorted(r.name for r in runs) == ["a", "b"]
    assert not (root / "c.json").exists() and not (root / "e.json").exists()
    t = spans(root, "ab")
    assert t["a"][1] <= t["b"][0]


@pytest.mark.slow
def test_a_failed_stage_stops_what_depends_on_it_and_is_named(tmp_path):
    root = project(tmp_path / "p", fail="b")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [BIN / "mml", "repro", "--jobs", "2"], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "failed: b" in result.stderr
    assert "d" in re.findall(r"[\w@]+", result.stderr.split("not started:")[1]), result.stderr
    assert not (root / "d.json").exists()
    assert (root / "a.json").exists()


@pytest.mark.slow
def test_an_interrupted_run_stops_its_stages_and_resumes(tmp_path):
    root = project(tmp_path / "p", slow="b")
    (root / "slow.txt").write_text("120")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    repro = subprocess.Popen(
        [BIN / "mml", "repro", "--jobs", "2"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as a terminal starts its foreground command: with SIGINT's default disposition even
        # when the suite itself runs in the background of a non-interactive shell, which starts
        # it ignored (and an ignored SIGINT stays ignored through exec: Python then installs no
        # KeyboardInterrupt handler, and the Ctrl-C below would be lost)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not (root / "b.pid").exists():  # b is running (and sleeping)
        assert time.monotonic() < deadline and repro.poll() is None, repro.communicate()[0]
        time.sleep(0.1)
    repro.send_signal(signal.SIGINT)  # Ctrl-C, to `mml repro` alone
    out = repro.communicate(timeout=STOP_SECONDS)[0]
    assert repro.returncode == 130, out
    assert "run the same command again to resume" in out
    pid = int((root / "b.pid").read_text())
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the stage's command was stopped, not left running
    assert not (root / "b.json").exists()
    (root / "slow.txt").write_text("0.1")
    runs = run_pipeline(root, jobs=2, echo=lambda _: None)  # again: finishes what was left
    assert "b" in {r.name for r in runs if r.ran} and (root / "d.json").exists()
