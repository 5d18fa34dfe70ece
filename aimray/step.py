"""One optimizer step of the adapter, and the no-gradient memory loss: what the loop's inner steps, bursts and
forgetting signal run, in micro-batches (gradient accumulation) and over data-parallel ranks. Torch only:
benchmarks time it without the rest of the loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aimray.distributed import Dist
from aimray.merging import arithmetic
from aimray.model import Backbone, answer_loss, answer_tokens
from aimray.tasks.spec import Example

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Learner:
    """What a forward or backward pass needs: the backbone, the live adapter tensors, the ranks."""

    bb: Backbone
    params: Tensors
    dist: Dist
    micro: int | None = None  # examples per forward/backward pass on a rank (None: the whole shard)


def micro_batches(examples: list[Example], size: int | None) -> list[list[Example]]:
    """`examples` in consecutive passes of at most `size` (None: one pass; none for no examples)."""
    size = size or max(1, len(examples))
    return [examples[i : i + size] for i in range(0, len(examples), size)]


def optimize(
    m: Learner,
    batch: list[Example],
    optimizer: torch.optim.Optimizer,
    clip: float,
    importance: Tensors | None = None,
    beta: float = 0.0,
    scale: float = 1.0,
) -> float:
    """One optimizer step on the mean answer loss of `batch`: gradients clipped to norm `clip`, the
    importance EMA updated with `beta` if asked; `scale` multiplies the loss before its backward pass
    (controller.burst_loss_scale); the unscaled loss is returned.

    Each rank takes its shard, in micro-batches of m.micro examples, and divides each pass's summed loss by
    the batch's global answer-token count: the gradients accumulated over passes and summed over ranks are
    those of the whole batch in one pass on one rank.
    """
    params = list(m.params.values())
    for p in params:
        p.grad = None
    shard = m.dist.shard(batch)
    tokens = m.dist.sum(answer_tokens(m.bb, shard))
    local = 0.0
    for part in micro_batches(shard, m.micro):
        loss = answer_loss(m.bb, part, reduction="sum") / tokens
        (loss * scale).backward()
        local += loss.item()
    m.dist.sum_grads(params)
    torch.nn.utils.clip_grad_norm_(params, clip)
    if importance is not None:
        arithmetic.update_importance(importance, m.params, beta)
    optimizer.step()
    return m.dist.sum(local)


@torch.no_grad()
def memory_loss(m: Learner, batch: list[Example], eval_mode: bool) -> float:
    """The mean answer loss per token of `batch` (in micro-batches), no gradient, in eval mode (dropout off)
    if asked."""
    if eval_mode:
        m.bb.model.eval()
    shard = m.dist.shard(batch)
    local = sum(answer_loss(m.bb, part, reduction="sum").item() for part in micro_batches(shard, m.micro))
    loss = m.dist.sum(local) / m.dist.sum(answer_tokens(m.bb, shard))
    m.bb.model.train()
    return loss
