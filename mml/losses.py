"""Losses: the task loss (CE or BCE), Mutual Learning's KL to detached peers, MARS/D3D terms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, targets: torch.Tensor, *, multilabel: bool) -> torch.Tensor:
    """Cross-entropy (single-label) or BCE-with-logits averaged over B*N (multi-label)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets)


def mutual_kl(
    logits: torch.Tensor,
    peer_logits: Sequence[torch.Tensor],
    *,
    multilabel: bool = False,
    form: Literal["pairwise", "mean_logits"] = "pairwise",
) -> torch.Tensor:
    """KL(p_peer || p_self) with peers detached (targets), as in ML/MML (paper eq. 1-2).

    pairwise: mean over peers j of KL(softmax(peer_j) || softmax(logits)).
    mean_logits: one KL to softmax(mean of the peers' logits) (the authors' code).
    Reduction: sum / B ("batchmean"), or sum / (B * num_classes) when multilabel (App. 2).
    """
    if not peer_logits:
        raise ValueError("mutual_kl needs at least one peer")
    peers = [p.detach() for p in peer_logits]
    if form == "mean_logits":
        peers = [torch.stack(peers).mean(dim=0)]
    elif form != "pairwise":
        raise ValueError(f"unknown KL form {form!r} (pairwise or mean_logits)")
    log_p = F.log_softmax(logits, dim=-1)
    divisor = logits.shape[0] * (logits.shape[-1] if multilabel else 1)
    total = logits.new_zeros(())
    for peer in peers:
        log_q = F.log_softmax(peer, dim=-1)
        total = total + (log_q.exp() * (log_q - log_p)).sum() / divisor
    return total / len(peers)


def distill_mse(
    student: torch.Tensor, teacher: torch.Tensor, *, multilabel: bool = False, num_classes: int = 1
) -> torch.Tensor:
    """MSE of a student's features (MARS) or logits (D3D) to a frozen teacher's, mean over
    elements; divided by `num_classes` too when multilabel (paper §3.5, like the KL term).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher outputs differ in shape: {tuple(student.shape)} vs "
            f"{tuple(teacher.shape)} (MARS needs the same architecture and input size)"
        )
    loss = F.mse_loss(student, teacher.detach())
    return loss / num_classes if multilabel else loss
