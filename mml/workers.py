"""Worker processes of parallel builds (caches, synthetic videos) that end with their parent.

After `kill -9` of `mml data flow` nobody shuts the process pool down, and its workers would
wait for tasks forever. `end_with(parent)`, run as a pool's initializer, ends a worker within
half a second of its parent.
"""

from __future__ import annotations

import os
import threading
import time


def end_with(parent: int) -> None:
    """Start a thread that ends this process once the process `parent` is gone."""
    threading.Thread(target=_exit_after, args=(parent,), daemon=True).start()


def _exit_after(parent: int) -> None:
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
