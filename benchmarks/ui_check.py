"""The MLflow UI in a real browser: does a comparison link of `mml report` show its runs?

After `make run`, in the project directory: starts `mlflow ui` on the project's store at
127.0.0.1 (a free port), takes the links `mml report` wrote to reports/summary.json (pointed at
that port), loads each with headless Chromium (`--dump-dom`: the page after its scripts ran)
and checks that the runs table lists every model the link names, as the run name
`<stage>.<k>-<modality>`: rows exist in the DOM only when shown, so a model run folded under
its stage run would be missing. Prints one line per link and the time it took, stops the
server. Exit code 1 if a check fails. Needs Debian's `chromium` (`apt-get install chromium`).

    .venv/bin/python benchmarks/ui_check.py [--links 3] [--budget-ms 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from serve_load import free_port, wait_until_up  # benchmarks/ is on sys.path

STORE = "sqlite:///mlruns/mlflow.db"
DEFAULT_ADDRESS = "http://127.0.0.1:5000"


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    sys.exit("no chromium on PATH: apt-get install chromium")


def dump_dom(chromium: str, url: str, budget_ms: int, profile: str) -> str:
    """The page's DOM after `budget_ms` of (virtual) time for its scripts and requests."""
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # running as root in a container
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--window-size=1600,1200",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=budget_ms / 1000 + 120,
    )
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=3, help="how many links to load")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time per page")
    args = parser.parse_args()

    summary = Path("reports/summary.json")
    links = json.loads(summary.read_text()).get("links", []) if summary.exists() else []
    if not links:
        sys.exit("reports/summary.json has no links: run `make run` (or `mml report`) first")
    chromium = browser()
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow),
            "ui",
            "--backend-store-uri",
            STORE,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,  # its log would fill an unread pipe
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    client = MlflowClient(STORE)
    failed = 0
    try:
        wait_until_up(f"{address}/health", server, timeout=120)
        with tempfile.TemporaryDirectory() as profile:
            for link in links[: args.links]:
                url = link["url"].replace(DEFAULT_ADDRESS, address, 1)
                fields = dict(urllib.parse.parse_qsl(url.split("?", 1)[1]))
                experiment = url.split("/experiments/")[1].split("/")[0]
                found = client.search_runs([experiment], fields["searchFilter"])
                names = sorted(r.info.run_name for r in found)
                start = time.perf_counter()
                dom = dump_dom(chromium, url, args.budget_ms, profile)
                seconds = time.perf_counter() - start
                missing = [n for n in names if n not in dom]
                ok = len(names) == len(link["models"]) > 0 and not missing
                failed += not ok
                shown = ", ".join(names)
                print(
                    f"{'ok  ' if ok else 'FAIL'} {link['name']}: {shown} ({seconds:.1f} s)"
                    + (f"; not in the page: {', '.join(missing)}" if missing else "")
                )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
