"""Fusion over adapter state dicts: our fuse equals peft's task_arithmetic; masks; importance EMA."""

from __future__ import annotations

import pytest
import torch
from peft.utils.merge_utils import task_arithmetic

from aimray.merging import arithmetic


def states(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[dict, dict, dict]:
    """(theta_t, delta_in, delta_out) for two LoRA-shaped tensors."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"layer.0.lora_A": (8, 16), "layer.0.lora_B": (16, 8)}

    def one() -> dict:
        return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}

    return one(), one(), one()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("w_in", "w_out"), [(0.5, 0.5), (0.4, 0.6), (0.6, 0.4), (1.0, 0.0), (-0.25, 2.0)])
def test_fuse_matches_hand_and_peft(w_in, w_out, dtype):
    anchor, d_in, d_out = states(1, dtype)
    fused = arithmetic.fuse(anchor, d_in, d_out, w_in, w_out)
    assert set(fused) == set(anchor)
    for k in anchor:
        by_hand = anchor[k] + w_in * d_in[k] + w_out * d_out[k]
        by_peft = anchor[k] + task_arithmetic([d_in[k], d_out[k]], torch.tensor([w_in, w_out], dtype=dtype))
        assert fused[k].dtype == dtype
        torch.testing.assert_close(fused[k], by_hand)
        torch.testing.assert_close(fused[k], by_peft, rtol=0, atol=0)


def test_zero_weights_are_the_identity():
    anchor, d_in, d_out = states(2)
    fused = arithmetic.fuse(anchor, d_in, d_out, 0.0, 0.0)
    for k in anchor:
        assert torch.equal(fused[k], anchor[k])


def test_unit_weights_add_both_deltas():
    anchor, d_in, d_out = states(3)
    fused = arithmetic.fuse(anchor, d_in, d_out, 1.0, 1.0)
    for k in anchor:
        torch.testing.assert_close(fused[k], anchor[k] + d_in[k] + d_out[k])


def test_fuse_does_not_modify_inputs():
    anchor, d_in, d_out = states(4)
    copies = [{k: v.clone() for k, v in s.items()} for s in (anchor, d_in, d_out)]
    arithmetic.fuse(anchor, d_in, d_out, 0.3, 0.7)
    for before, after in zip(copies, (anchor, d_in, d_out), strict=True):
        for k in before:
            assert torch.equal(before[k], after[k])


def test_difference():
    after = {"a": torch.tensor([3.0, 5.0]), "b": torch.tensor([[1.0]])}
    before = {"a": torch.tensor([1.0, 7.0]), "b": torch.tensor([[4.0]])}
    diff = arithmetic.difference(after, before)
    assert torch.equal(diff["a"], torch.tensor([2.0, -2.0]))
    assert torch.equal(diff["b"], torch.tensor([[-3.0]]))
    # the difference of a trained parameter carries no graph
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    assert not arithmetic.difference({"p": p}, {"p": torch.zeros(2)})["p"].requires_grad


def test_fuse_of_differences_round_trip():
    """theta_t + 1 * (theta - theta_t) + 0 * delta_out = theta."""
    anchor, theta, d_out = states(5)
    fused = arithmetic.fuse(anchor, arithmetic.difference(theta, anchor), d_out, 1.0, 0.0)
    for k in anchor:
        torch.testing.assert_close(fused[k], theta[k])


@pytest.mark.parametrize(
    ("importance", "fraction", "expected"),
    [
        (torch.arange(10.0), 0.2, [0] * 8 + [1, 1]),  # top 20% of 10 = 2 elements
        (torch.arange(10.0), 0.5, [0] * 5 + [1] * 5),
        (torch.arange(10.0), 1.0, [1] * 10),
        (torch.arange(10.0), 0.01, [0] * 9 + [1]),  # at least one element
        (torch.tensor([1.0, 1.0, 1.0, 0.0]), 0.25, [1, 1, 1, 0]),  # ties at the cut-off are kept
        (torch.tensor([5.0, 0.0, 9.0, 2.0]), 0.5, [1, 0, 1, 0]),
    ],
)
def test_top_mask(importance, fraction, expected):
    assert arithmetic.top_mask(importance, fraction).tolist() == expected


def test_top_mask_2d_counts_the_whole_tensor():
    imp = torch.tensor([[0.0, 7.0], [3.0, 9.0], [1.0, 2.0]])  # 6 elements, top half = 3
    assert arithmetic.top_mask(imp, 0.5).tolist() == [[0, 1], [1, 1], [0, 0]]


@pytest.mark.parametrize(
    ("m_in", "m_out", "expected"),
    [
        (1.0, 1.0, (0.4, 0.6)),  # both important
        (0.0, 0.0, (0.5, 0.5)),  # neither
        (1.0, 0.0, (1.0, 0.0)),  # only the new task's
        (0.0, 1.0, (0.0, 1.0)),  # only the memory's
    ],
)
def test_mask_weights(m_in, m_out, expected):
    w_in, w_out = arithmetic.mask_weights(torch.tensor([m_in]), torch.tensor([m_out]))
    assert (w_in.item(), w_out.item()) == pytest.approx(expected)


def test_mask_weights_element_wise():
    w_in, w_out = arithmetic.mask_weights(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(w_in, torch.tensor([0.4, 1.0, 0.0, 0.5]))
    torch.testing.assert_close(w_out, torch.tensor([0.6, 0.0, 1.0, 0.5]))


def test_fuse_masked_by_hand():
    anchor = {"w": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    d_in = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    d_out = {"w": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    imp_in = {"w": torch.tensor([4.0, 3.0, 2.0, 1.0])}  # top half: elements 0, 1
    imp_out = {"w": torch.tensor([4.0, 1.0, 3.0, 2.0])}  # top half: elements 0, 2
    fused = arithmetic.fuse_masked(anchor, d_in, d_out, imp_in, imp_out, 0.5)
    # element 0 both (0.4, 0.6); 1 in only (1, 0); 2 out only (0, 1); 3 neither (0.5, 0.5)
    expected = [10 + 0.4 * 1 + 0.6 * 10, 20 + 2, 30 + 30, 40 + 0.5 * 4 + 0.5 * 40]
    torch.testing.assert_close(fused["w"], torch.tensor(expected))


def test_fuse_masked_matches_peft_per_element():
    anchor, d_in, d_out = states(6)
    imp_in, imp_out, _ = states(7)
    imp_in = {k: v.abs() for k, v in imp_in.items()}
    imp_out = {k: v.abs() for k, v in imp_out.items()}
    fused = arithmetic.fuse_masked(anchor, d_in, d_out, imp_in, imp_out, 0.2)
    for k in anchor:
        w_in, w_out = arithmetic.mask_weights(arithmetic.top_mask(imp_in[k], 0.2), arithmetic.top_mask(imp_out[k], 0.2))
        by_hand = anchor[k] + w_in * d_in[k] + w_out * d_out[k]
        by_peft = anchor[k] + task_arithmetic([d_in[k], d_out[k]], torch.stack([w_in, w_out]))
        torch.testing.assert_close(fused[k], by_hand)
        torch.testing.assert_close(fused[k], by_peft, rtol=0, atol=0)


def test_update_importance_ema():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([0.5, 0.5, -1.0])  # |w * grad| = [0.5, 1.0, 3.0]
    frozen = torch.nn.Parameter(torch.tensor([1.0]))  # no grad: skipped
    importance: dict[str, torch.Tensor] = {}
    arithmetic.update_importance(importance, {"p": p, "frozen": frozen}, beta=0.85)
    assert set(importance) == {"p"}
    torch.testing.assert_close(importance["p"], torch.tensor([0.075, 0.15, 0.45]))  # 0.15 * score
    arithmetic.update_importance(importance, {"p": p}, beta=0.85)
    torch.testing.assert_close(importance["p"], torch.tensor([0.13875, 0.2775, 0.8325]))  # 0.85 I + 0.15 score
    p.grad = torch.zeros(3)
    arithmetic.update_importance(importance, {"p": p}, beta=0.85)
    torch.testing.assert_close(importance["p"], 0.85 * torch.tensor([0.13875, 0.2775, 0.8325]))
    assert not importance["p"].requires_grad
