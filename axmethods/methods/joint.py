"""Shared pieces of the gradient-trained rank-1 methods (Probe, ReFT-r1, SSV), trained jointly over concepts.

All concepts of a chunk are rows of one fp32 parameter [k, d]. Each step gives every concept a
mini-batch of its *own* examples, and the loss is the sum of the per-concept mean losses, so each row's
gradient is exactly that concept's gradient alone; AdamW and the per-row operations below (gradient
clipping, unit-norm projection) are row-local, which makes joint training equal to k separate runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


def concept_batches(members: torch.Tensor, batch_size: int, epochs: int, generator: torch.Generator
                    ) -> Iterator[torch.Tensor]:
    """Per step, [k, batch_size] row indices: each concept's examples reshuffled every epoch; −1 pads.

    A concept with fewer examples than the widest one simply has no rows in the last steps of an epoch.
    """
    valid = members >= 0
    steps = math.ceil(members.shape[1] / batch_size)
    for _ in range(epochs):
        keys = torch.rand(members.shape, generator=generator).masked_fill(~valid, float("inf"))
        shuffled = members.gather(1, keys.argsort(1))
        for step in range(steps):
            yield shuffled[:, step * batch_size:(step + 1) * batch_size]


def optimizer_steps(members: torch.Tensor, batch_size: int, epochs: int, accumulation: int) -> int:
    return math.ceil(math.ceil(members.shape[1] / batch_size) * epochs / accumulation)


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LR from its initial value linearly down to 0 over `total_steps`, no warmup (AxBench's schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(total_steps, 1)))


@torch.no_grad()
def remove_parallel_gradient(weight: torch.nn.Parameter) -> None:
    """Drop each row's gradient component along the row (Gao et al. 2024): steps stay on the unit sphere."""
    if weight.grad is None:
        return
    unit = weight / weight.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    weight.grad -= (weight.grad * unit).sum(-1, keepdim=True) * unit


@torch.no_grad()
def normalise_(weight: torch.nn.Parameter) -> None:
    weight /= weight.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def clip_rows_(weight: torch.nn.Parameter, max_norm: float) -> None:
    """Per-concept gradient clipping (a joint `clip_grad_norm_` would couple the concepts)."""
    if weight.grad is None or max_norm <= 0:
        return
    norms = weight.grad.norm(dim=-1, keepdim=True)
    weight.grad *= (max_norm / (norms + 1e-6)).clamp(max=1.0)


def prepare_gradient_(weight: torch.nn.Parameter, max_norm: float, unit_norm: bool) -> None:
    """Before an optimiser step, AxBench's order: clip each row's gradient, then (unit-norm methods) remove its
    component parallel to the row. The other order would let the clipped gradient reach `max_norm` in full."""
    clip_rows_(weight, max_norm)
    if unit_norm:
        remove_parallel_gradient(weight)
