"""The served model under concurrent load: `mml serve` on 127.0.0.1, base64 videos in.

Starts the real server (`mml serve`, i.e. `mlflow models serve` of the project's champion),
asks it once for each distinct validation video alone (the labels every later answer must
repeat, and the warm-up), then sends `--clients` concurrent clients x `--requests` requests,
each one `video_b64` row: validation videos, with every `--broken-every`-th request broken
(truncated bytes, random bytes, malformed base64, over the size limit, in turn). It checks
that every good video gets its label and every broken one its row error (never an HTTP
error), that the server still answers afterwards, and prints requests/s, latency
percentiles, errors by kind and the server's memory (PSS of its process tree) before and
after, then stops the server. Exit code 1 if a check fails.

    python benchmarks/serve_load.py [--clients 8] [--requests 50] [--workers 1] [--videos 40]

Run it after `make run` (which promotes the champion) in the project directory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

BROKEN = ("truncated", "random bytes", "malformed base64", "over the size limit")
# a row error's kind, by what its message says (mml.serving, mml.data.video)
KINDS = {
    "cannot decode": "cannot decode",
    "not valid base64": "not valid base64",
    "over the limit of": "over the size limit",
    "time limit exceeded": "time limit",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pss_mb(pid: int) -> float:
    """PSS of a process and its descendants, MB (RSS where PSS cannot be read)."""
    total = 0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def invoke(url: str, rows: list[dict], timeout: float) -> tuple[int, list[dict]]:
    """(HTTP status, predictions) of one scoring request."""
    body = json.dumps({"dataframe_records": rows, "params": {"top_k": 1}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as err:
        return err.code, []


def error_kind(message: str) -> str:
    return next((kind for key, kind in KINDS.items() if key in message), "other")


def broken_row(kind: str, good: bytes, limit: int, rng: np.random.Generator) -> dict:
    if kind == "truncated":
        return {"video_b64": base64.b64encode(good[: len(good) // 3]).decode()}
    if kind == "random bytes":
        return {"video_b64": base64.b64encode(rng.bytes(len(good))).decode()}
    if kind == "malformed base64":
        return {"video_b64": "%%%" + base64.b64encode(good).decode()}
    return {"video_b64": base64.b64encode(bytes(limit + 1)).decode()}


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default=None, help="model URI (default: the RGB champion)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--videos", type=int, default=40, help="distinct validation videos")
    parser.add_argument("--broken-every", type=int, default=10)
    parser.add_argument("--max-bytes", type=int, default=1 << 20, help="the server's limit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from mml.config import load_params
    from mml.data.dataset import load_split

    params = load_params(Path(args.params))
    records = load_split(params.dataset, "val").records[: args.videos]
    videos = [Path(r.path).read_bytes() for r in records]
    rng = np.random.default_rng(args.seed)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("mml")), "serve", "--port", str(port)]
    command += ["--workers", str(args.workers), "--max-bytes", str(args.max_bytes)]
    command += ["--params", args.params] + (["--model", args.model] if args.model else [])
    env = {k: v for k, v in os.environ.items() if k != "MML_SERVE_ROOTS"}  # bytes only
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    failures: list[str] = []
    try:
        wait_until_up(f"{base}/ping", server)
        expected = []
        for i, data in enumerate(videos):  # each video alone: its label, and the warm-up
            status, rows = invoke(
                f"{base}/invocations", [{"video_b64": base64.b64encode(data).decode()}], 120
            )
            if status != 200 or rows[0]["error"]:
                failures.append(f"video {records[i].id} alone: HTTP {status} {rows}")
            expected.append(rows[0]["label"] if rows else "")
        memory_before = tree_pss_mb(server.pid)

        plan = []  # (client, request) -> what it sends and what it must get
        for c in range(args.clients):
            for r in range(args.requests):
                n = c * args.requests + r
                if args.broken_every and n % args.broken_every == args.broken_every - 1:
                    kind = BROKEN[(n // args.broken_every) % len(BROKEN)]
                    plan.append(
                        (c, broken_row(kind, videos[n % len(videos)], args.max_bytes, rng), kind)
                    )
                else:
                    i = int(rng.integers(len(videos)))
                    row = {"video_b64": base64.b64encode(videos[i]).decode()}
                    plan.append((c, row, i))
        latencies: list[float] = []
        kinds: Counter[str] = Counter()
        lock = threading.Lock()

        def client(c: int) -> None:
            for _, row, want in (p for p in plan if p[0] == c):
                start = time.perf_counter()
                try:
                    status, rows = invoke(f"{base}/invocations", [row], 300)
                except OSError as err:
                    status, rows = 0, [{"error": f"connection: {err}", "label": ""}]
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if status != 200:
                        kinds[f"HTTP {status}"] += 1
                        failures.append(f"HTTP {status} for {want!r}")
                        continue
                    got = rows[0]
                    if isinstance(want, int):
                        if got["error"] or got["label"] != expected[want]:
                            failures.append(f"video {records[want].id}: {got}")
                        kinds["ok" if not got["error"] else error_kind(got["error"])] += 1
                    else:
                        kind = error_kind(got["error"]) if got["error"] else "ok"
                        kinds[kind] += 1
                        if not got["error"]:
                            failures.append(f"broken ({want}) got a label: {got['label']}")

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - start
        memory_after = tree_pss_mb(server.pid)
        status, rows = invoke(
            f"{base}/invocations", [{"video_b64": base64.b64encode(videos[0]).decode()}], 60
        )
        still_up = status == 200 and rows[0]["label"] == expected[0]
        if not still_up:
            failures.append(f"after the load: HTTP {status} {rows}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    ms = np.array(latencies) * 1000
    total = len(plan)
    print(
        f"server: mml serve --workers {args.workers} --max-bytes {args.max_bytes} "
        f"({params.dataset.name} champion{'' if not args.model else ' ' + args.model}); "
        f"{args.clients} clients x {args.requests} requests, one video each, "
        f"{len(videos)} distinct validation videos, every {args.broken_every}th broken"
    )
    print()
    print("| requests | wall s | requests/s | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    print(
        f"| {total} | {wall:.1f} | {total / wall:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} "
        f"| {ms.max():.0f} |"
    )
    print()
    print("answers by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"server memory (PSS, MB): {memory_before:.0f} before, {memory_after:.0f} after")
    print(f"still answering afterwards: {'yes' if still_up else 'NO'}")
    if failures:
        print(f"\n{len(failures)} checks failed, e.g.:", *failures[:5], sep="\n  ")
        return 1
    print("every good video got its label, every broken one its row error")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
