"""Multi-seed study: the pipeline once per seed as DVC experiments, then one report over all.

    .venv/bin/python benchmarks/seed_study.py --seeds 1 2 3 4 5 [--jobs 1]

Run from the repository root. Queues one experiment per seed (`dvc exp run --queue -S seed=N
--name seed-N`), starts the queue (`dvc queue start -j JOBS`), shows the finished experiments as
they come, starts the queue again if its worker died with experiments still queued (DVC's
Celery worker has been seen to stop on a broker read error: `JSONDecodeError` in
`.dvc/tmp/exps/celery/dvc-exp-worker-*.out`), prints the log of any that failed
(`dvc queue logs NAME`), then writes the report
over this workspace's own run (if it has one) and every finished seed (`mml report --exp
seed-1 ...`) and prints its path and the wall time. Each experiment runs in a temporary copy of
the workspace (its uncommitted changes included); only stages that depend on the seed re-run.
Their MLflow runs go to MLFLOW_TRACKING_URI, or else to this workspace's own store
(sqlite:///<here>/mlruns/mlflow.db), not to the temporary copy.
Ctrl-C stops waiting, not the queue (`dvc queue kill NAME`, `dvc queue stop`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from dvc.api import exp_show
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

BIN = Path(sys.executable).parent  # dvc and mml of this venv, first on PATH (as the Makefile)
DONE = {"Success", "Failed", "Missing"}
console = Console(stderr=True)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    store = f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"  # experiments run elsewhere
    env = {
        "MLFLOW_TRACKING_URI": store,
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def queue(seeds: list[int], prefix: str) -> list[str]:
    """One queued experiment per seed; refuses names that experiments of HEAD already use."""
    names = [f"{prefix}-{seed}" for seed in seeds]
    taken = set(run("dvc", "exp", "list", "--name-only").stdout.split()) & set(names)
    if taken:
        sys.exit(
            f"experiments {sorted(taken)} exist already: remove them (`dvc exp remove "
            f"{' '.join(sorted(taken))}`) or choose another --prefix."
        )
    for seed, name in zip(seeds, names, strict=True):
        run("dvc", "exp", "run", "--queue", "-S", f"seed={seed}", "--name", name)
    return names


def queue_status(names: list[str]) -> tuple[dict[str, str], int]:
    """Status of each named task that `dvc queue status` still lists (Queued, Running, ...),
    and how many queue workers are alive (active or idle)."""
    found, workers = {}, 0
    for line in run("dvc", "queue", "status", check=False).stdout.splitlines():
        tokens = line.split()
        if line.startswith("Worker status:"):  # "Worker status: 1 active, 0 idle"
            workers = int(tokens[2]) + int(tokens[4])
            continue
        for name in set(tokens) & set(names):
            found[name] = tokens[-1]
    return found, workers


def states(names: list[str]) -> dict[str, str]:
    """State of each named experiment of HEAD: Queued, Running, Success, Failed, or Missing
    (neither an experiment nor a task any more, e.g. removed from the queue: nothing to wait for).
    """
    rows = exp_show(".", force=True)
    found = {r["Experiment"]: r.get("State") or "Success" for r in rows if r.get("Experiment")}
    pending = [name for name in names if name not in found]
    tasks = queue_status(pending)[0] if pending else {}
    return {name: found.get(name) or tasks.get(name, "Missing") for name in names}


def restart_dead_queue(names: list[str], jobs: int) -> bool:
    """Start the queue again when experiments wait in it and no worker is alive to run them.

    `dvc queue start` launches workers that exit once the queue is empty; one that dies
    earlier leaves the rest queued forever. Returns whether it restarted the queue."""
    tasks, workers = queue_status(names)
    if workers or "Queued" not in tasks.values() or "Running" in tasks.values():
        return False
    waiting = sorted(n for n, s in tasks.items() if s == "Queued")
    console.print(
        f"[yellow]no queue worker is alive and {', '.join(waiting)} wait[/yellow]: "
        f"dvc queue start -j {jobs}"
    )
    run("dvc", "queue", "start", "-j", str(jobs))
    return True


def wait(names: list[str], poll: float, jobs: int = 1, grace: float = 60.0) -> dict[str, str]:
    """Poll until every experiment finished, with a progress bar of finished ones; every `grace`
    seconds (a worker just started needs a while to register), restart the queue if no worker is
    alive while experiments still wait in it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("experiments", total=len(names))
        checked = time.monotonic()
        while True:
            now = states(names)
            running = ", ".join(n for n, s in now.items() if s == "Running") or "-"
            failed = ", ".join(n for n, s in now.items() if s == "Failed")
            label = f"running {running}" + (f"; failed {failed}" if failed else "")
            progress.update(task, completed=sum(s in DONE for s in now.values()), description=label)
            if all(s in DONE for s in now.values()):
                return now
            if time.monotonic() - checked >= grace:  # a worker needs a while to register
                checked = time.monotonic()
                restart_dead_queue(names, jobs)
            time.sleep(poll)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--jobs", type=int, default=1, help="experiments run side by side")
    parser.add_argument("--prefix", default="seed", help="experiment names: PREFIX-SEED")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between status checks")
    parser.add_argument("--out", default="reports", help="directory of the report")
    args = parser.parse_args()
    if not Path("dvc.yaml").exists():
        sys.exit("run from the repository root (where dvc.yaml is)")
    started = time.time()
    names = queue(args.seeds, args.prefix)
    run("dvc", "queue", "start", "-j", str(args.jobs))
    final = wait(names, args.poll, args.jobs)
    for name in (n for n, s in final.items() if s != "Success"):
        log = run("dvc", "queue", "logs", name, check=False)
        if final[name] == "Missing":
            console.print(f"[red]{name} is gone[/red]: neither an experiment nor a queued task")
            continue
        console.print(f"[red]{name} failed[/red]; the end of `dvc queue logs {name}`:")
        console.print("\n".join((log.stdout + log.stderr).splitlines()[-30:]), markup=False)
    done = [n for n, s in final.items() if s == "Success"]
    if not done:
        sys.exit("no experiment finished: no report")
    report = run("mml", "report", "-q", "--out", args.out, *(f"--exp={n}" for n in done))
    print(report.stdout.strip())
    print(
        f"report: {Path(args.out) / 'summary.md'} ({len(done)} of {len(names)} seeds); "
        f"wall time {time.time() - started:.0f} s"
    )
    sys.exit(0 if len(done) == len(names) else 1)


if __name__ == "__main__":
    main()
