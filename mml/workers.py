"""Parallel builds (caches, synthetic videos): worker processes that end with their parent.

`run_parallel` is the one process pool of mml's data builders. It starts workers with
"forkserver", not "fork": a forked child deadlocks if the parent's OpenCV/decoder thread pools
held a lock at fork time (seen after compute_flow in the parent); forkserver children start
clean. After `kill -9` of `mml data flow` nobody shuts the pool down, and its workers would wait
for tasks forever: each worker ends within half a second of its parent.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any


def run_parallel(
    make: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    initializer: Callable[[], None] | None = None,
) -> list[Any]:
    """[make(t) for t in tasks], in task order; progress(done, total) as each task finishes.

    workers 0 runs in this process; otherwise in min(workers, len(tasks)) worker processes,
    each running `initializer()` first. `make`, `initializer` and the tasks must be picklable
    (module-level functions, plain data).
    """
    if workers <= 0 or not tasks:
        results = []
        for done, task in enumerate(tasks, start=1):
            results.append(make(task))
            if progress is not None:
                progress(done, len(tasks))
        return results
    with ProcessPoolExecutor(
        min(workers, len(tasks)),
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer),
    ) as pool:
        futures = [pool.submit(make, task) for task in tasks]
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()  # a task's exception stops the build here
            if progress is not None:
                progress(done, len(tasks))
        return [f.result() for f in futures]


def _start_worker(parent: int, initializer: Callable[[], None] | None) -> None:
    """End this worker once the process `parent` is gone; then `initializer()`."""
    threading.Thread(target=_exit_after, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer()


def _exit_after(parent: int) -> None:
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
