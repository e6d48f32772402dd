"""Run under torchrun by tests/test_distributed.py: DDP steps of a joint ML step on shards.

Every process takes its slice of the same global batches (uneven: 3 + 2 of 5 clips), with
BatchNorm synchronised over processes (`mml.distributed.GlooSyncBatchNorm`) and the models
wrapped in DistributedDataParallel; rank 0 saves the weights. In float64 the result must
equal one process stepping on the whole batches (`single_process_steps`) to rounding.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from mml import distributed
from mml.config import ComputeConfig, ModelSpec, Params, StageConfig, TrainConfig
from mml.data.dataset import Batch
from mml.models.factory import build_model
from mml.stage_setup import make_optimizer
from mml.train import JointForward, JointStep, Member

STEPS, GLOBAL_BATCH, CLASSES = 3, 5, 4
PARAMS = Params(model={"dropout": 0.0}, train=TrainConfig(optimizer="sgd", lr=0.05))
STAGE = StageConfig(method="ml", models=(ModelSpec(), ModelSpec()), kl_weight=2.0)
DTYPE = torch.float64


def members() -> list[Member]:
    out = []
    for k in range(2):
        torch.manual_seed(k)
        model = build_model(PARAMS.model, CLASSES, "rgb", "scratch", checkpoints=None)
        model.to(dtype=DTYPE).train()
        out.append(Member(k, "rgb", model, make_optimizer(model, PARAMS, fresh_head=False)))
    return out


def global_batches() -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 4, 3, 28, 28, generator=g, dtype=DTYPE)
        y = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)
        batches.append(Batch({"rgb": x}, y, [str(i) for i in range(GLOBAL_BATCH)], []))
    return batches


def single_process_steps() -> list[dict[str, torch.Tensor]]:
    ms = members()
    step = JointStep(STAGE, ms, False, CLASSES, clip_grad=PARAMS.train.clip_grad, dtype=DTYPE)
    for batch in global_batches():
        step(batch, lr=PARAMS.train.lr)
    return [m.model.state_dict() for m in ms]


def main(out: str) -> None:
    world = distributed.setup(ComputeConfig())
    ms = members()
    for m in ms:
        distributed.sync_batchnorm(m.model, world.device)
    net = torch.nn.parallel.DistributedDataParallel(JointForward([m.model for m in ms]))
    step = JointStep(
        STAGE, ms, False, CLASSES, clip_grad=PARAMS.train.clip_grad, net=net, dtype=DTYPE
    )
    for batch in global_batches():
        part = np.array_split(np.arange(GLOBAL_BATCH), world.size)[world.rank]
        shard = Batch(
            {"rgb": batch.inputs["rgb"][part]},
            batch.targets[part],
            [batch.ids[i] for i in part],
            [],
        )
        counts = distributed.all_gather_int(world, len(part))
        step(shard, lr=PARAMS.train.lr, weight=world.size * len(part) / sum(counts))
    if world.main:
        torch.save([m.model.state_dict() for m in ms], out)
    distributed.teardown(world)


if __name__ == "__main__":
    main(sys.argv[1])
