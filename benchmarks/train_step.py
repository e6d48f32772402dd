"""Training-step throughput and peak memory (random input, CPU).

Table 1: one model per architecture. Table 2: the joint ML/MML step (`mml.train.JointStep`,
M = 2 and 3 models on one batch) against the sum of the same models' single CE steps through
the same code. Table 3: the same steps in mixed precision (`compute.precision: bf16`, autocast
with channels_last) against float32: a ratio on this CPU, not a claim about GPUs.
Each configuration runs in a fresh subprocess so that its peak RSS is its own;
memory is the peak RSS growth over the process after imports.

    python benchmarks/train_step.py [--params params.yaml] [--steps 10] [-S key=value ...]
    python benchmarks/train_step.py --only-precision    # table 3 alone
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
    return {
        "arch": params.model.arch,
        "width": params.model.width_mult if mobile else "-",
        "T": c.segments,
        "crop": c.crop_size,
        "batch": b,
        "clips_s": b * steps / elapsed,
        "step_ms": elapsed / steps * 1000,
        "peak_mb": peak / 1024,
        "model_mb": (peak - before) / 1024,
        "threads": torch.get_num_threads(),
    }


def run_joint(params_path: str, overrides: list[str], steps: int, spec: str) -> dict:
    """`spec` = "method:modality,modality,...", e.g. "mml:rgb,flow,diff" or "ce:flow"."""
    import torch

    from mml.config import StageConfig, load_params
    from mml.data.dataset import Batch
    from mml.models import MODALITY_CHANNELS, build_model
    from mml.stage_setup import make_optimizer
    from mml.train import JointStep, Member, for_precision, precision_dtypes

    params = load_params(params_path, overrides)
    dtype, autocast = precision_dtypes(params.compute.precision)
    method, names = spec.split(":")
    modalities = names.split(",")
    b, c = params.loader.batch_size, params.clip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    members = []
    for k, modality in enumerate(modalities):
        model = build_model(params.model, 12, modality).train().to(dtype)
        model = for_precision(model, params.model.arch, autocast)
        members.append(Member(k, modality, model, make_optimizer(model, params, fresh_head=False)))
    cfg = StageConfig(method=method, models=[{"modality": m} for m in modalities])
    scaler = torch.amp.GradScaler("cpu") if params.compute.precision == "fp16" else None
    step = JointStep(
        cfg,
        members,
        False,
        12,
        clip_grad=params.train.clip_grad,
        dtype=dtype,
        autocast=autocast,
        scaler=scaler,
    )
    shape = (b, c.segments)
    inputs = {
        m: torch.randn(*shape, MODALITY_CHANNELS[m], c.crop_size, c.crop_size, dtype=dtype)
        for m in set(modalities)
    }
    batch = Batch(inputs, torch.randint(0, 12, (b,)), [str(i) for i in range(b)], [])
    step(batch, 0.01)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step(batch, 0.01)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"spec": spec, "step_ms": elapsed / steps * 1000, "mem_mb": (peak - before) / 1024}


def _subprocess(args, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--params",
        args.params,
        "--steps",
        str(args.steps),
        *extra,
    ] + [a for o in args.overrides for a in ("-S", o)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def joint_table(args) -> None:
    print(
        "\n| joint step | models | step ms | sum of single CE steps (ms) | ratio "
        "| memory MB | sum of single (MB) |"
    )
    print("|---|---|---|---|---|---|---|")
    single = {m: _subprocess(args, ["--joint", f"ce:{m}"]) for m in ("rgb", "flow", "diff")}
    for spec in ("ml:rgb,rgb", "mml:rgb,flow", "mml:rgb,flow,diff"):
        joint = _subprocess(args, ["--joint", spec])
        modalities = spec.split(":")[1].split(",")
        ms = sum(single[m]["step_ms"] for m in modalities)
        mb = sum(single[m]["mem_mb"] for m in modalities)
        print(
            f"| {spec} | {len(modalities)} | {joint['step_ms']:.0f} | {ms:.0f} | "
            f"{joint['step_ms'] / ms:.2f} | {joint['mem_mb']:.0f} | {mb:.0f} |"
        )
    cells = ", ".join(f"{m} {r['step_ms']:.0f} ms, {r['mem_mb']:.0f} MB" for m, r in single.items())
    print(f"\nsingle CE steps: {cells}")


def precision_table(args) -> None:
    """Joint steps in bf16 (autocast) against float32, each in a fresh process."""
    print("\n| step | float32 ms | bf16 ms | bf16 / float32 |")
    print("|---|---|---|---|")
    for spec in ("ce:rgb", "mml:rgb,flow,diff"):
        ms = {}
        for precision in ("float32", "bf16"):
            extra = ["--joint", spec, "-S", f"compute.precision={precision}"]
            ms[precision] = _subprocess(args, extra)["step_ms"]
        ratio = ms["bf16"] / ms["float32"]
        print(f"| {spec} | {ms['float32']:.0f} | {ms['bf16']:.0f} | {ratio:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--joint", help=argparse.SUPPRESS)
    parser.add_argument("--only-joint", action="store_true", help="skip the per-arch table")
    parser.add_argument("--only-precision", action="store_true", help="table 3 alone")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.params, args.overrides, args.steps)))
        return
    if args.joint:
        print(json.dumps(run_joint(args.params, args.overrides, args.steps, args.joint)))
        return
    if args.only_joint:
        joint_table(args)
        return
    if args.only_precision:
        precision_table(args)
        return
    configs = [args.overrides]  # the default (plus any -S given), then a few comparisons
    configs += [
        args.overrides + extra
        for extra in (
            ["clip.segments=1"],
            ["model.arch=tsm_resnet18"],
            ["model.arch=tsm_resnet50"],
        )
    ]
    print("| arch | width | T | crop | batch | clips/s | step ms | peak RSS MB | threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for overrides in configs:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            "--params",
            args.params,
            "--steps",
            str(args.steps),
        ] + [a for o in overrides for a in ("-S", o)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        cells = [
            r["arch"],
            r["width"],
            r["T"],
            r["crop"],
            r["batch"],
            f"{r['clips_s']:.1f}",
            f"{r['step_ms']:.0f}",
            f"{r['peak_mb']:.0f}",
            r["threads"],
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    joint_table(args)
    precision_table(args)


if __name__ == "__main__":
    main()
