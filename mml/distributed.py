"""Training in several processes (torch.distributed): the process group, wrapping, sums.

`mml train STAGE` runs as one process, or as N under `torchrun -m mml train STAGE` (or
`mml train STAGE --nproc N`, which starts torchrun). With N processes every model of the
stage is wrapped in DistributedDataParallel; each process takes its slice of the same
global batches a single-process run would draw (`mml.data.sharding`), so data order, loss
weights and logged numbers do not depend on N. Only rank 0 talks to MLflow and writes files.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mml.config import ComputeConfig, ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(cfg: ComputeConfig) -> World:
    """Join the process group torchrun described in RANK/WORLD_SIZE (if any); pick the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if size == 1:
        return World(device=device)
    backend = cfg.backend if cfg.backend != "auto" else "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"compute.backend=nccl needs GPUs, but compute.device is {device}.")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=cfg.timeout_minutes))
    # DDP's note that depthwise convolutions' gradients are copied into its buckets: harmless
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if rank != 0:  # one voice: the other ranks only report problems
        logging.getLogger("mml").setLevel(logging.WARNING)
    return World(rank, size, device, backend)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a SLURM job's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_threads(cfg: ComputeConfig, workers: int) -> int:
    """Set torch's intra-op threads for this process and return how many.

    `compute.threads` when given; otherwise the usable CPUs shared among the `compute.nproc`
    processes, less the `workers` loader processes that decode beside each of them (at least 1).
    Small CPU models run faster this way than with torch's default of one thread per CPU, which
    leaves the loader's workers competing with the model for the same cores.
    """
    threads = cfg.threads or max(1, usable_cpus() // cfg.nproc - workers)
    torch.set_num_threads(threads)
    return threads


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`compute.device` as a torch device (auto: this process's GPU if there is one)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"compute.device={name!r} is not a torch device (auto, cpu, cuda, cuda:1)."
        ) from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"compute.device={name!r}, but torch sees no GPU here.")
    return device


def wrap(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """`module` in DistributedDataParallel when there are several processes."""
    if not world.distributed:
        return module
    device = world.device
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )


def teardown(world: World, *, wait: bool = True) -> None:
    """Leave the process group; with `wait`, once every process got here (rank 0 logs last)."""
    if world.distributed and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_sum(world: World, values: Sequence[float]) -> list[float]:
    """Element-wise sum of `values` over all processes (float64)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device(world))
    dist.all_reduce(t)
    return t.tolist()


def all_gather_int(world: World, value: int) -> list[int]:
    """`value` of every process, in rank order."""
    if not world.distributed:
        return [value]
    device = _comm_device(world)
    parts = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(world.size)]
    dist.all_gather(parts, torch.tensor(value, dtype=torch.int64, device=device))
    return [int(p) for p in parts]


def all_gather_objects(world: World, obj: Any) -> list[Any]:
    """Picklable `obj` of every process, in rank order (small things: predictions, stats)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def _comm_device(world: World) -> torch.device:
    return world.device if world.backend == "nccl" else torch.device("cpu")


class _SyncBatchNormFn(torch.autograd.Function):
    """Normalise with global statistics; backward as BatchNorm's, with global gradient sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, count):
        shape = [1, -1] + [1] * (x.dim() - 2)
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat, weight, invstd, count)
        return x_hat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x_hat, weight, invstd, count = ctx.saved_tensors
        dims = [0, *range(2, dy.dim())]
        shape = [1, -1] + [1] * (dy.dim() - 2)
        sum_dy, sum_dy_xhat = dy.sum(dims), (dy * x_hat).sum(dims)  # this shard's: dbeta, dgamma
        totals = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(totals)  # over every shard: what the statistics pass back
        mean_dy, mean_dy_xhat = (totals / count).view(2, -1)
        scale = (weight * invstd).view(shape)
        dx = (dy - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)) * scale
        return dx, sum_dy_xhat, sum_dy, None, None, None


class GlooSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm with batch statistics over every process's shard, on CPU (gloo).

    torch's SyncBatchNorm needs GPUs; this one does the same with all-reduces of the
    per-channel sums (forward: count, sum, centred sum of squares; backward: the gradient
    sums BatchNorm's backward needs), so N processes normalise as one process on the whole
    batch would and keep the same running statistics.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        with torch.no_grad():  # statistics accumulated in float64, like one big batch
            sums = torch.cat(
                [x.new_tensor([x.numel() / x.shape[1]]).double(), x.sum(dims, dtype=torch.float64)]
            )
            dist.all_reduce(sums)
            count, mean = sums[0], sums[1:] / sums[0]
            centred = x.double() - mean.view([1, -1] + [1] * (x.dim() - 2))
            var = (centred * centred).sum(dims)
            dist.all_reduce(var)
            var = var / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.to(x.dtype) * m)
                self.running_var.mul_(1 - m).add_(unbiased.to(x.dtype) * m)
        ones = x.new_ones(x.shape[1])
        weight = self.weight if self.affine else ones
        bias = self.bias if self.affine else ones * 0
        invstd = torch.rsqrt(var + self.eps).to(x.dtype)
        return _SyncBatchNormFn.apply(x, weight, bias, mean.to(x.dtype), invstd, count.to(x.dtype))


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` with every BatchNorm synchronised over processes (same parameters, buffers)."""
    if device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, GlooSyncBatchNorm | torch.nn.SyncBatchNorm
        ):
            like = next(iter(child.state_dict().values()), torch.empty(0))
            synced = GlooSyncBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=like.device,
                dtype=like.dtype,
            )
            synced.load_state_dict(child.state_dict())
            if child.affine:
                synced.weight, synced.bias = child.weight, child.bias
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            sync_batchnorm(child, device)
    return module


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m mml <argv>` as `nproc` processes on this machine under torchrun."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mml",
        *argv,
    ]
    print(f"starting {nproc} training processes: {' '.join(cmd[1:])}", file=sys.stderr)
    return subprocess.run(cmd, check=False).returncode
