"""Fusion rules: how a merge combines theta_t, delta_in and delta_out, by the name controller.weights gives
(rule, fixed, mask, or one a plugin registers). The registry imports no torch, so that a config is validated
against it without loading a model library; the rules' tensor arithmetic (aimray.merging.arithmetic: torch,
peft) is imported when a rule first runs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aimray.merging import signals

if TYPE_CHECKING:
    import torch

    from aimray.config import ControllerConfig

State = Mapping[str, "torch.Tensor"]
Fused = tuple[dict[str, "torch.Tensor"], float, float]


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
    combine: Callable[[Merge], Fused]
    needs_importance: bool = False  # the loop keeps the importance EMAs (inner steps, bursts) for it


def rule_fusion(m: Merge) -> Fused:
    """AimMerging's scalar weights from the cues at the merge (signals.rule_weights)."""
    from aimray.merging.arithmetic import fuse

    w_in, w_out = signals.rule_weights(m.activations, m.interval, m.cfg.new_task_important_s)
    return fuse(m.anchor, m.delta_in, m.delta_out, w_in, w_out), w_in, w_out


def fixed_fusion(m: Merge) -> Fused:
    """Constant weights controller.fixed_w_in / fixed_w_out."""
    from aimray.merging.arithmetic import fuse

    w_in, w_out = m.cfg.fixed_w_in, m.cfg.fixed_w_out
    return fuse(m.anchor, m.delta_in, m.delta_out, w_in, w_out), w_in, w_out


def mask_fusion(m: Merge) -> Fused:
    """Element-wise weights from the top-controller.importance_top importance masks; before both estimates
    exist (no burst step yet) the fixed weights."""
    from aimray.merging.arithmetic import fuse_masked

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
