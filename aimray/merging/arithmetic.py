"""The tensor arithmetic of a merge over adapter state dicts: deltas, the weighted sum (peft's task_arithmetic),
importance masks and their EMA. Pure functions of tensors; the fusion rules (aimray.merging.fusion) call them."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft.utils.merge_utils import task_arithmetic

State = Mapping[str, torch.Tensor]


def difference(after: State, before: State) -> dict[str, torch.Tensor]:
    """delta = after - before, per tensor."""
    return {k: after[k].detach() - before[k].detach() for k in before}


def fuse(anchor: State, delta_in: State, delta_out: State, w_in: float, w_out: float) -> dict[str, torch.Tensor]:
    """theta <- theta_t + w_in * delta_in + w_out * delta_out (global scalar weights)."""
    fused = {}
    for k, theta in anchor.items():  # weights built in the tensor's dtype and on its device (no float32 rounding)
        weights = torch.tensor([w_in, w_out], dtype=theta.dtype, device=theta.device)
        fused[k] = theta + task_arithmetic([delta_in[k], delta_out[k]], weights)
    return fused


def top_mask(importance: torch.Tensor, fraction: float) -> torch.Tensor:
    """1.0 where importance is in the top `fraction` of its tensor (ties at the cut-off included), else 0."""
    k = max(1, round(fraction * importance.numel()))
    cut = importance.flatten().topk(k).values.min()
    return (importance >= cut).to(importance.dtype)


def mask_weights(mask_in: torch.Tensor, mask_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise (w_in, w_out) from importance masks (Recurrent-KIF style): both -> (0.4, 0.6),
    neither -> (0.5, 0.5), only one -> the mask values ((1, 0) or (0, 1))."""
    both = mask_in * mask_out
    neither = (1 - mask_in) * (1 - mask_out)
    w_in = both * 0.4 + neither * 0.5 + mask_in * (1 - mask_out)
    w_out = both * 0.6 + neither * 0.5 + mask_out * (1 - mask_in)
    return w_in, w_out


def fuse_masked(
    anchor: State, delta_in: State, delta_out: State, imp_in: State, imp_out: State, fraction: float
) -> dict[str, torch.Tensor]:
    """theta <- theta_t + W_in * delta_in + W_out * delta_out with element-wise weights from the top-
    `fraction` masks of the two importance estimates (EMA of |w * grad| on the new task / on the memory)."""
    fused = {}
    for k in anchor:
        w_in, w_out = mask_weights(top_mask(imp_in[k], fraction), top_mask(imp_out[k], fraction))
        fused[k] = anchor[k] + task_arithmetic([delta_in[k], delta_out[k]], torch.stack([w_in, w_out]))
    return fused


def update_importance(importance: dict[str, torch.Tensor], params: State, beta: float) -> None:
    """EMA of |w * grad| per element, in place: I <- beta * I + (1 - beta) * |w * grad|."""
    for k, p in params.items():
        if p.grad is None:
            continue
        score = (p.detach() * p.grad.detach()).abs()
        if k in importance:
            importance[k].mul_(beta).add_(score, alpha=1 - beta)
        else:
            importance[k] = (1 - beta) * score
