"""Run the DVC pipeline with independent stages side by side (`mml repro --jobs N`).

`dvc repro` runs one stage at a time. DVC's documented way to run independent branches of a
pipeline concurrently is one `dvc repro` process per branch: a `dvc repro` releases the repo
lock while its stage's command runs and takes it again to write `dvc.lock`. This module does
exactly that over DVC's own stage graph, one `dvc --wait-for-lock repro --single-item STAGE`
per stage: a stage starts when every stage it depends on has finished, at most `jobs` at once,
the one heading the longest chain of stages still to run first.

Everything else stays DVC's: which stage changed (an unchanged one is skipped by its own
`dvc repro`), `dvc.lock`, the run cache, the read/write locks on outputs. `--single-item` keeps
each process away from the stages upstream of its own (finished before it starts, by
construction), so two processes never lock each other's outputs. After `mml repro`, a plain
`dvc repro` finds nothing to do; the stages' numbers do not depend on `jobs` (each `mml train`
takes its thread count from `compute.threads`, not from what else is running).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvc.exceptions import DvcException
from dvc.repo import Repo

from mml.errors import UserError

# Popen's process_group is new in Python 3.11; before it, setpgrp in the child does the same.
NEW_PROCESS_GROUP = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
)
STOP_SECONDS = 60  # after a Ctrl-C, how long a stage may take to stop before it is killed


@dataclass
class StageRun:
    """One stage's `dvc repro` process and how it ended."""

    name: str
    seconds: float = 0.0
    returncode: int | None = None
    ran: bool = True  # False when DVC found the stage unchanged


def stage_graph(root: Path) -> dict[str, set[str]]:
    """Every stage of the DVC project at `root` -> the stages whose outputs it depends on."""
    try:
        with Repo(os.fspath(root)) as repo:
            graph = repo.index.graph
            return {
                _address(stage, root): {_address(up, root) for up in graph.successors(stage)}
                for stage in graph.nodes
            }
    except DvcException as err:
        raise UserError(f"cannot read the DVC pipeline in {root}: {err}") from err


def _address(stage, root: Path) -> str:
    """How `dvc repro` run in `root` names `stage`: `name`, `sub/dvc.yaml:name` or `x.dvc`."""
    path = os.path.relpath(stage.path, root)
    name = getattr(stage, "name", None)
    if not name:  # a .dvc file (`dvc add`, `dvc import`)
        return path
    return name if path == "dvc.yaml" else f"{path}:{name}"


def upstream_closure(graph: dict[str, set[str]], targets: Iterable[str]) -> dict[str, set[str]]:
    """The part of `graph` that `dvc repro TARGETS` would consider: the targets and their upstream.

    A target may be a stage (`train@rgb_ce`) or a foreach group (`train`: all of its stages).
    """
    wanted: set[str] = set()
    for target in targets:
        matches = [name for name in graph if name == target or name.startswith(f"{target}@")]
        if not matches:
            known = ", ".join(sorted(graph))
            raise UserError(f"no stage {target!r} in dvc.yaml; stages: {known}")
        stack = list(matches)
        while stack:
            name = stack.pop()
            if name not in wanted:
                wanted.add(name)
                stack.extend(graph[name])
    return {name: graph[name] & wanted for name in graph if name in wanted}


def chain_lengths(graph: dict[str, set[str]]) -> dict[str, int]:
    """Per stage, the number of stages on the longest downstream chain that starts at it."""
    downstream: dict[str, set[str]] = {name: set() for name in graph}
    for name, ups in graph.items():
        for up in ups:
            downstream[up].add(name)
    lengths: dict[str, int] = {}

    def length(name: str) -> int:
        if name not in lengths:
            lengths[name] = 1 + max((length(d) for d in downstream[name]), default=0)
        return lengths[name]

    for name in graph:
        length(name)
    return lengths


def dvc_command(stage: str) -> list[str]:
    """The command that reproduces `stage` alone, waiting for the repo lock instead of failing."""
    return _dvc("repro", "--single-item", stage)


def _dvc(*args: str) -> list[str]:
    """This environment's dvc, waiting for the repo lock instead of failing on it."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def changed_stages(root: Path, env: dict[str, str]) -> set[str]:
    """The stages `dvc status` finds changed now (deps, params, outs or command). A stage that
    is not, and none of whose upstream stages runs, is skipped as `dvc repro` would skip it."""
    result = subprocess.run(
        _dvc("status", "--json"),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise UserError(f"`dvc status` failed in {root}:\n{result.stdout}{result.stderr}")
    return set(json.loads(result.stdout or "{}"))


def run_pipeline(
    root: Path,
    targets: Sequence[str] = (),
    jobs: int = 2,
    echo: Callable[[str], None] = print,
    command: Callable[[str], list[str]] = dvc_command,
) -> list[StageRun]:
    """Reproduce the pipeline at `root` (or the `targets` and their upstream), `jobs` at a time.

    A stage that `dvc status` finds unchanged, below stages that did not run either, is skipped
    without a `dvc repro` of its own. Each stage's output is echoed line by line, prefixed with
    its name. When a stage fails no
    new stage starts, the running ones finish, and UserError names the failed stages; a run
    started again resumes (DVC skips what finished, training resumes from last.pt).
    """
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    graph = stage_graph(root)
    if targets:
        graph = upstream_closure(graph, targets)
    priority = chain_lengths(graph)
    env = dict(os.environ)
    # The stages call `mml`: this interpreter's environment first, as `make run` does.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    changed = changed_stages(root, env)
    waiting = dict(graph)
    done: set[str] = set()
    ran: set[str] = set()
    running: dict[str, tuple[subprocess.Popen, threading.Thread, float]] = {}
    finished: list[StageRun] = []
    failed: list[StageRun] = []
    lock = threading.Lock()

    def relay(run: StageRun, stream) -> None:
        for line in stream:
            text = line.rstrip("\n")
            if "didn't change, skipping" in text:
                run.ran = False
            with lock:
                echo(f"[{run.name}] {text}")

    runs: dict[str, StageRun] = {}
    try:
        while waiting or running:
            ready = [name for name, ups in waiting.items() if ups <= done] if not failed else []
            ready.sort(key=lambda name: (-priority[name], name))
            unchanged = [n for n in ready if n not in changed and not graph[n] & ran]
            for name in unchanged:  # DVC's own verdict, without a process per stage
                del waiting[name]
                done.add(name)
                finished.append(StageRun(name, returncode=0, ran=False))
                with lock:
                    echo(f"[{name}] unchanged ({len(done)}/{len(graph)})")
            if unchanged:
                continue
            for name in ready[: jobs - len(running)]:
                del waiting[name]
                run = runs[name] = StageRun(name)
                proc = subprocess.Popen(
                    command(name),
                    cwd=root,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    # Its own process group (see the interruption below), in this session: a new
                    # session would be a new scheduler autogroup on Linux, which splits the CPU
                    # between stages evenly instead of between their processes.
                    **NEW_PROCESS_GROUP,
                )
                thread = threading.Thread(target=relay, args=(run, proc.stdout), daemon=True)
                thread.start()
                running[name] = (proc, thread, time.monotonic())
            if not running:
                break  # a stage failed and nothing else is running
            name = _wait_any(running)
            proc, thread, started = running.pop(name)
            thread.join()
            run = runs[name]
            run.returncode = proc.returncode
            run.seconds = time.monotonic() - started
            finished.append(run)
            if proc.returncode == 0:
                done.add(name)
                if run.ran:
                    ran.add(name)
                with lock:
                    verb = "ran" if run.ran else "unchanged"
                    echo(f"[{name}] {verb} in {run.seconds:.1f} s ({len(done)}/{len(graph)})")
            else:
                failed.append(run)
                with lock:
                    echo(f"[{name}] failed (exit {proc.returncode}): no new stage starts")
    finally:
        # Interrupted (Ctrl-C reaches this process only): each running stage gets the SIGINT a
        # terminal would have sent it, in its whole process group (dvc and the stage's command),
        # so training saves nothing half-written and resumes from last.pt next time.
        for proc, _, _ in running.values():
            _signal_group(proc, signal.SIGINT)
        for proc, _, _ in running.values():
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
    if failed:
        names = ", ".join(run.name for run in failed)
        skipped = ", ".join(sorted(waiting)) or "none"
        raise UserError(f"failed: {names} (their output is above); not started: {skipped}")
    return finished


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _wait_any(running: dict[str, tuple[subprocess.Popen, threading.Thread, float]]) -> str:
    """The name of a running stage whose process has ended (polls: a handful of processes)."""
    while True:
        for name, (proc, _, _) in running.items():
            if proc.poll() is not None:
                return name
        time.sleep(0.2)
