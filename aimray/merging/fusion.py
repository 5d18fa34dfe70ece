"""Fusion over adapter state dicts: pure tensor arithmetic (peft's task_arithmetic does the weighted sum), and
the registry of fusion rules (rule, fixed, mask) that controller.weights names."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from peft.utils.merge_utils import task_arithmetic

from aimray.config import ControllerConfig
from aimray.merging import signals

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


# ---------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Merge:
    """Everything a fusion rule may use at one merge: the anchor theta_t, the two deltas, the importance
    estimates of the task (EMAs over its inner and burst steps; empty unless the rule asks for them), the
    controller's state at the merge (activations, nominal S) and the controller config."""

    anchor: State
    delta_in: State
    delta_out: State
    imp_in: State
    imp_out: State
    activations: int
    interval: int
    cfg: ControllerConfig


@dataclass(frozen=True)
class Fusion:
    """A fusion rule: `combine(merge) -> (fused adapter, w_in, w_out)`, w NaN where element-wise."""

    name: str
    combine: Callable[[Merge], tuple[dict[str, torch.Tensor], float, float]]
    needs_importance: bool = False  # the loop keeps the importance EMAs (inner steps, bursts) for it


def rule_fusion(m: Merge) -> tuple[dict[str, torch.Tensor], float, float]:
    """AimMerging's scalar weights from the cues at the merge (signals.rule_weights)."""
    w_in, w_out = signals.rule_weights(m.activations, m.interval, m.cfg.new_task_important_s)
    return fuse(m.anchor, m.delta_in, m.delta_out, w_in, w_out), w_in, w_out


def fixed_fusion(m: Merge) -> tuple[dict[str, torch.Tensor], float, float]:
    """Constant weights controller.fixed_w_in / fixed_w_out."""
    w_in, w_out = m.cfg.fixed_w_in, m.cfg.fixed_w_out
    return fuse(m.anchor, m.delta_in, m.delta_out, w_in, w_out), w_in, w_out


def mask_fusion(m: Merge) -> tuple[dict[str, torch.Tensor], float, float]:
    """Element-wise weights from the top-controller.importance_top importance masks; before both estimates
    exist (no burst step yet) the fixed weights."""
    if not (m.imp_in and m.imp_out):
        return fixed_fusion(m)
    fused = fuse_masked(m.anchor, m.delta_in, m.delta_out, m.imp_in, m.imp_out, m.cfg.importance_top)
    return fused, math.nan, math.nan


FUSIONS: dict[str, Fusion] = {}


def register_fusion(fusion: Fusion) -> Fusion:
    if fusion.name in FUSIONS:
        raise ValueError(f"fusion {fusion.name!r} is already registered")
    FUSIONS[fusion.name] = fusion
    return fusion


def get_fusion(name: str) -> Fusion:
    if name not in FUSIONS:
        raise KeyError(f"unknown fusion {name!r}; valid: {', '.join(FUSIONS)}")
    return FUSIONS[name]


register_fusion(Fusion("rule", rule_fusion))
register_fusion(Fusion("fixed", fixed_fusion))
register_fusion(Fusion("mask", mask_fusion, needs_importance=True))
