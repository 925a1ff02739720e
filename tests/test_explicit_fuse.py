"""Distributions on the target's tokens, MinCE/AvgCE fusion and the fusion loss (fusechat3/explicit/fuse.py),
each against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusechat3.explicit.fuse import Sparse, fuse, fusion_loss, fusion_weights, to_target


def _as_dict(s: Sparse, row: int) -> dict[int, float]:
    return {int(i): round(float(p), 6) for i, p in zip(s.ids[row], s.probs[row], strict=True) if i >= 0}


def test_to_target_takes_aligned_distributions_and_the_next_token_elsewhere():
    target_ids = [10, 11, 12, 13, 14]
    # Source positions 0..5, top-2 each (source ids, log-probs).
    top_ids = np.array([[0, 1], [2, 3], [4, 5], [0, 2], [1, 3], [4, 0]])
    top_lp = np.log(np.array([[0.6, 0.2], [0.5, 0.5], [0.7, 0.1], [0.4, 0.4], [0.9, 0.05], [0.5, 0.3]]))
    vocab_map = np.array([11, 12, 12, 13, 14, 10])  # source ids 1 and 2 both stand for target id 12
    groups = np.array(
        [
            [0, 1, 0, 1],  # one-to-one: target position 0 <- source position 0
            [1, 2, 1, 3],  # two source pieces -> one target token: the last piece's (source position 2)
            [2, 4, 3, 4],  # one source piece -> two target tokens: one-hot on the next token
            [4, 5, 4, 6],  # the last target token, two source pieces: the last piece's
        ]
    )
    got = to_target(top_ids, top_lp, groups, target_ids, vocab_map, k=3)
    assert _as_dict(got, 0) == {11: 0.75, 12: 0.25}  # 0.6 and 0.2, normalised
    assert _as_dict(got, 1) == {14: 0.875, 10: 0.125}  # source position 2: ids 4, 5
    assert _as_dict(got, 2) == {13: 1.0}  # position 2 predicts token 3 (id 13), not its own token 12
    assert _as_dict(got, 3) == {14: 1.0}
    assert _as_dict(got, 4) == {14: 0.625, 11: 0.375}  # source position 5: ids 4, 0 at 0.5 and 0.3
    # Two source ids on one target id are summed.
    merged = to_target(np.array([[1, 2]]), np.log(np.array([[0.3, 0.3]])), np.array([[0, 1, 0, 1]]), [7], vocab_map)
    assert _as_dict(merged, 0) == {12: 1.0}


def test_same_next_keeps_a_source_distribution_only_where_the_next_tokens_are_the_same():
    """`same_next`: a position keeps the source's distribution only where the next source token is the
    next target token; where the source splits the next target token, the one-hot on it."""
    target_ids = [10, 11, 12, 13, 14, 15]
    top_ids = np.array([[0, 1], [2, 3], [4, 5], [0, 2], [1, 3], [4, 0], [1, 2]])
    top_lp = np.log(np.full((7, 2), 0.5))
    vocab_map = np.arange(6) + 20
    groups = np.array(
        [
            [0, 1, 0, 1],  # target 0 = source 0
            [1, 2, 1, 2],  # target 1 = source 1
            [2, 3, 2, 4],  # target 2 = source pieces 2, 3
            [3, 4, 4, 5],  # target 3 = source 4
            [4, 5, 5, 6],  # target 4 = source 5
        ]
    )
    papers = to_target(top_ids, top_lp, groups, target_ids, vocab_map, k=3)
    assert _as_dict(papers, 1) == {22: 0.5, 23: 0.5}  # source position 1 predicts piece 2 only: kept anyway
    got = to_target(top_ids, top_lp, groups, target_ids, vocab_map, k=3, same_next=np.array([[5, 6]]))
    assert _as_dict(got, 0) == {20: 0.5, 21: 0.5}  # next: target 1 = source 1, the same token
    assert _as_dict(got, 1) == {12: 1.0}  # next: target 2, which the source splits: one-hot
    assert _as_dict(got, 2) == {20: 0.5, 22: 0.5}  # last piece (source 3) predicts source 4 = target 3
    assert _as_dict(got, 3) == {21: 0.5, 23: 0.5}  # next: target 4 = source 5
    assert _as_dict(got, 4) == {24: 0.5, 20: 0.5}  # next: target 5 = source 6, a given pair (end of turn)
    without = to_target(top_ids, top_lp, groups, target_ids, vocab_map, k=3, same_next=np.zeros((0, 2)))
    assert _as_dict(without, 4) == {15: 1.0}  # without that pair: one-hot on the next target token


def test_min_ce_and_avg_ce_with_three_sources():
    a = Sparse(np.array([[1, 2, -1]]), np.array([[0.5, 0.5, 0.0]], np.float32))
    b = Sparse(np.array([[2, 3, -1]]), np.array([[0.8, 0.2, 0.0]], np.float32))
    c = Sparse(np.array([[4, -1, -1]]), np.array([[1.0, 0.0, 0.0]], np.float32))
    ce = [1.2, 0.7, 2.0]
    assert _as_dict(fuse([a, b, c], ce, "minCE", k=3), 0) == {2: 0.8, 3: 0.2}
    # AvgCE by hand: weights exp(-ce) / sum.
    e = [math.exp(-x) for x in ce]
    w = [x / sum(e) for x in e]
    want = {1: 0.5 * w[0], 2: 0.5 * w[0] + 0.8 * w[1], 3: 0.2 * w[1], 4: w[2]}
    got = fuse([a, b, c], ce, "avgCE", k=4)
    assert _as_dict(got, 0) == {i: round(p, 6) for i, p in want.items()}
    # k = 2 keeps the two most likely ids (2 and 1), renormalised.
    top2 = _as_dict(fuse([a, b, c], ce, "avgCE", k=2), 0)
    assert set(top2) == {1, 2} and sum(top2.values()) == pytest.approx(1.0, abs=1e-6)
    assert fusion_weights([3.0, 3.0], "minCE").tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="minCE or avgCE"):
        fusion_weights([1.0], "maxCE")


def _hand_loss(logits, labels, fused_ids, fused_probs, lam):
    """Independent: plain Python loops over positions."""
    gold = soft = n = 0.0
    for b in range(len(labels)):
        for t in range(len(labels[b]) - 1):
            if labels[b][t + 1] == -100:
                continue
            row = logits[b][t]
            z = math.log(sum(math.exp(x) for x in row))
            gold += -(row[labels[b][t + 1]] - z)
            soft += -sum(p * (row[i] - z) for i, p in zip(fused_ids[b][t], fused_probs[b][t], strict=True) if i >= 0)
            n += 1
    return lam * gold / n + (1 - lam) * soft / n


def test_fusion_loss_against_a_hand_computation_and_the_shifted_one_hot():
    import torch

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    labels = torch.tensor([[-100, 3, 1, 5], [-100, -100, 2, 4]])
    tokens = [[0, 3, 1, 5], [2, 0, 2, 4]]  # the texts (labels are them with the prompt masked)
    fused_ids = torch.tensor(
        [
            [[3, 2, -1], [1, 5, 0], [5, -1, -1], [-1, -1, -1]],
            [[0, 1, -1], [2, 3, -1], [4, -1, -1], [-1, -1, -1]],
        ]
    )
    fused_probs = torch.tensor(
        [
            [[0.7, 0.3, 0], [0.6, 0.3, 0.1], [1.0, 0, 0], [0, 0, 0]],
            [[0.5, 0.5, 0], [0.9, 0.1, 0], [1.0, 0, 0], [0, 0, 0]],
        ]
    )
    want = _hand_loss(logits.tolist(), labels.tolist(), fused_ids.tolist(), fused_probs.tolist(), 0.9)
    assert fusion_loss(logits, labels, fused_ids, fused_probs).item() == pytest.approx(want, rel=1e-6)
    assert fusion_loss(logits, labels, fused_ids, fused_probs, lam=1.0).item() == pytest.approx(
        _hand_loss(logits.tolist(), labels.tolist(), fused_ids.tolist(), fused_probs.tolist(), 1.0), rel=1e-6
    )
    # The one-hot fallback through to_target, on the next token as here, against the reference
    # code's way (the current token): only the right one matches the hand computation.
    groups = np.array([[0, 2, 0, 1], [2, 4, 1, 2]])  # no source distribution anywhere: all one-hot
    onehot = to_target(np.zeros((2, 1), np.int64), np.zeros((2, 1)), groups, tokens[0], np.arange(6), k=3)
    ids = torch.tensor(np.stack([onehot.ids, onehot.ids]))
    probs = torch.tensor(np.stack([onehot.probs, onehot.probs]))
    lab = torch.tensor([tokens[0], tokens[0]])
    want = _hand_loss(
        logits.tolist(),
        lab.tolist(),
        [[[tokens[0][t + 1]] for t in range(3)] + [[-1]]] * 2,
        [[[1.0]] * 3 + [[0.0]]] * 2,
        0.5,
    )
    assert fusion_loss(logits, lab, ids, probs, lam=0.5).item() == pytest.approx(want, rel=1e-6)
    shifted_ids = torch.tensor([[[t] for t in tokens[0]]] * 2)  # the one-hot on the current token
    shifted = fusion_loss(logits, lab, shifted_ids, torch.ones(2, 4, 1), lam=0.5).item()
    assert shifted != pytest.approx(want, rel=1e-3)


def test_fusion_loss_gathers_at_the_sparse_ids_only():
    """The target never becomes [batch, length, vocab]: with a large vocabulary the loss runs on K ids."""
    import torch

    logits = torch.randn(1, 3, 50_000, requires_grad=True)
    labels = torch.tensor([[1, 2, 3]])
    ids = torch.tensor([[[5, 9], [7, -1], [-1, -1]]])
    probs = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]])
    loss = fusion_loss(logits, labels, ids, probs, lam=0.0)
    loss.backward()
    # Only the fused ids (and the softmax's normaliser) move: the gradient is largest at those ids.
    g = logits.grad[0, 0]
    assert g[5] < 0 and g[9] < 0 and torch.count_nonzero(g < 0) == 2
