"""Training-step throughput and peak memory of the default model (random input, CPU).

Each configuration runs in a fresh subprocess so that its peak RSS is its own.

    python benchmarks/train_step.py [--params params.yaml] [--steps 10] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(params_path: str, overrides: list[str], steps: int) -> dict:
    import torch

    from mml.config import load_params
    from mml.models import build_model

    params = load_params(params_path, overrides)
    torch.manual_seed(0)
    model = build_model(params.model, 12, "rgb").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    b, c = params.loader.batch_size, params.clip
    x = torch.randn(b, c.segments, 3, c.crop_size, c.crop_size)
    y = torch.randint(0, 12, (b,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mobile = params.model.arch == "tsm_mobilenet_v2"
    return {"arch": params.model.arch, "width": params.model.width_mult if mobile else "-",
            "T": c.segments,
            "crop": c.crop_size, "batch": b, "clips_s": b * steps / elapsed,
            "step_ms": elapsed / steps * 1000, "peak_mb": peak / 1024,
            "model_mb": (peak - before) / 1024, "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.params, args.overrides, args.steps)))
        return
    configs = [args.overrides]  # the default (plus any -S given), then a few comparisons
    configs += [args.overrides + extra for extra in (
        ["clip.segments=1"],
        ["model.arch=tsm_resnet18"],
        ["model.arch=tsm_resnet50"],
    )]  # fmt: skip
    print("| arch | width | T | crop | batch | clips/s | step ms | peak RSS MB | threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for overrides in configs:
        cmd = [sys.executable, __file__, "--one", "--params", args.params,
               "--steps", str(args.steps)] + [a for o in overrides for a in ("-S", o)]  # fmt: skip
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        cells = [r["arch"], r["width"], r["T"], r["crop"], r["batch"], f"{r['clips_s']:.1f}",
                 f"{r['step_ms']:.0f}", f"{r['peak_mb']:.0f}", r["threads"]]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
