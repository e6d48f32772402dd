"""Where one training step's CPU time goes, and how slow depthwise weight gradients are.

Table 1: the default model's CE training step (random input, the params' clip and batch,
AdamW, the thread count the pipeline uses: `compute.threads` or 1), profiled with
`torch.profiler` over --steps steps: the share of each operator, and of the convolution
backward the part spent in depthwise convolutions (groups == channels), by feature-map size.

Table 2: for each depthwise convolution shape the model runs, the weight gradient as aten
computes it (`aten::convolution_backward`, weight only) against the same gradient written as
one grouped convolution of the input by the output gradient (batch and channels swapped):
the same sum in another order, so equal up to rounding (the max difference is printed).
A measurement for deciding what to do about it; mml's models use aten's kernel unchanged.

    python benchmarks/step_profile.py [--params params.yaml] [--steps 10] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import collections
import functools
import time

import torch
import torch.nn.functional as F
from cache_formats import timed  # benchmarks/ is on sys.path: ms per call after a warm-up
from torch.profiler import ProfilerActivity, profile

from mml.config import load_params
from mml.models import build_model
from mml.models.depthwise import grouped_weight_grad


def weight_grad_aten(x, go, weight, stride, padding):
    mask = [False, True, False]
    dims = ([stride] * 2, [padding] * 2, [1, 1])
    return torch.ops.aten.convolution_backward(
        go, x, weight, None, *dims, False, [0, 0], x.shape[1], mask
    )[1]


def weight_grad_grouped(x, go, weight, stride, padding):
    """The same gradient as one grouped conv (what mml.models.depthwise computes)."""
    return grouped_weight_grad(x, go, weight.shape[-2:], [stride] * 2, [padding] * 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    params = load_params(args.params, args.overrides)
    torch.set_num_threads(params.compute.threads or 1)
    torch.manual_seed(0)
    model = build_model(params.model, 6, "rgb").train()
    opt = torch.optim.AdamW(model.parameters(), lr=params.train.lr)
    b, c = params.loader.batch_size, params.clip
    x = torch.randn(b, c.segments, 3, c.crop_size, c.crop_size)
    y = torch.randint(0, 6, (b,))
    depthwise = {}

    def remember(module, inputs, output):
        key = (tuple(inputs[0].shape), module.stride[0], module.padding[0])
        depthwise[key] = (inputs[0].detach(), module.weight.detach(), output.shape)

    hooks = [
        m.register_forward_hook(remember)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1
    ]

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    for hook in hooks:
        hook.remove()
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = time.perf_counter() - start
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    by_op = collections.Counter()
    dw_by_size = collections.Counter()
    for e in events:
        by_op[e.key] += e.self_cpu_time_total
        shapes = e.input_shapes
        if e.key == "aten::convolution_backward" and len(shapes) > 2 and shapes[2][1:2] == [1]:
            dw_by_size[f"{shapes[1][2]}x{shapes[1][3]}"] += e.self_cpu_time_total
    print(
        f"\n{params.model.arch} T={c.segments} crop {c.crop_size} batch {b}, "
        f"{torch.get_num_threads()} thread(s): {b * args.steps / wall:.1f} clips/s, "
        f"{wall / args.steps * 1000:.0f} ms/step\n"
    )
    print("| operator | share of CPU time |\n|---|---|")
    for key, t in by_op.most_common(6):
        print(f"| {key} | {100 * t / total:.1f} % |")
    for size, t in sorted(dw_by_size.items(), key=lambda kv: -kv[1]):
        print(f"| ... depthwise convolution_backward, input {size} | {100 * t / total:.1f} % |")

    print("\n| depthwise input (N·T, C, H, W), stride | aten dW ms | grouped dW ms | max diff |")
    print("|---|---|---|---|")
    for (shape, stride, padding), (inp, weight, out_shape) in sorted(depthwise.items()):
        call = (inp, torch.randn(out_shape), weight, stride, padding)
        diff = (weight_grad_aten(*call) - weight_grad_grouped(*call)).abs().max().item()
        ta = timed(functools.partial(weight_grad_aten, *call), repeats=20)
        tg = timed(functools.partial(weight_grad_grouped, *call), repeats=20)
        print(f"| {shape}, {stride} | {ta:.2f} | {tg:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
