"""The sources' distributions on the target's tokens, fused, and the loss that distils them.

Everything stays sparse: a distribution per target position is `k` (target id, probability) pairs,
never a vector over the vocabulary, and the loss gathers the student's log-probabilities at those
ids. Position `t` of a text predicts token `t + 1`, for the sources' distributions as for the
student's logits.

- `to_target`: one source's top-k distributions, moved to the target's positions and ids. A target
  token aligned one-to-one gets the source position's distribution; one made of several source
  pieces gets the last piece's (FuseChat-2.0); any other target position gets a one-hot on the
  *next* target token (the reference FuseLLM code puts it on the current token, an off-by-one).
  Source ids go through the vocabulary map; ids that land on the same target id are summed.
- `fuse`: per text, over any number of sources, given each source's cross-entropy on the text:
  **MinCE** keeps the distribution of the source with the lowest cross-entropy; **AvgCE** averages
  them with weights softmax(-CE), i.e. proportional to each source's per-token likelihood of the
  text, exp(-CE). (The reference code takes a softmax over exp(-CE) instead, values in (0, 1], so
  its weights never differ by more than a factor e: nearly uniform whatever the sources' quality.)
- `fusion_loss`: lambda x CE(gold) + (1 - lambda) x CE(fused, student), lambda = 0.9 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sparse:
    """Per target position, `k` target ids (-1: none) and their probabilities (summing to 1 where
    the position has any, 0 where it has none: the last position, which predicts nothing)."""

    ids: np.ndarray  # int64 [L, k]
    probs: np.ndarray  # float32 [L, k]


def _rows_top_k(rows: np.ndarray, ids: np.ndarray, probs: np.ndarray, length: int, k: int) -> Sparse:
    """Sum the probabilities of equal (row, id) pairs, keep the `k` most likely ids per row and
    normalise each row to 1. Vectorised over all rows at once."""
    keep = (ids >= 0) & (probs > 0)
    rows, ids, probs = rows[keep], ids[keep], probs[keep].astype(np.float64)
    vocab = int(ids.max()) + 1 if len(ids) else 1
    keys, inverse = np.unique(rows * vocab + ids, return_inverse=True)
    total = np.bincount(inverse, weights=probs, minlength=len(keys))
    r, i = np.divmod(keys, vocab)
    order = np.lexsort((i, -total, r))  # per row: most likely first, ties by lower id
    r, i, total = r[order], i[order], total[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    sel = rank < k
    out_ids = np.full((length, k), -1, dtype=np.int64)
    out_p = np.zeros((length, k), dtype=np.float64)
    out_ids[r[sel], rank[sel]] = i[sel]
    out_p[r[sel], rank[sel]] = total[sel]
    sums = out_p.sum(1, keepdims=True)
    out_p = np.divide(out_p, sums, out=np.zeros_like(out_p), where=sums > 0)
    return Sparse(out_ids, out_p.astype(np.float32))


def to_target(
    top_ids: np.ndarray,
    top_logprobs: np.ndarray,
    groups: np.ndarray,
    target_ids,
    vocab_map: np.ndarray,
    k: int = 10,
    same_next: np.ndarray | None = None,
) -> Sparse:
    """One source's top-k next-token distributions ([L_source, k] source ids and log-probs) on the
    target's positions and ids, given the alignment `groups` (align.Alignment.groups).

    `same_next` ([E, 2] of (target position, source position), e.g. the end-of-turn tokens): when given,
    a position keeps the source's distribution only where the next source token *is* the next target
    token (a one-to-one group, or one of these pairs), and gets the one-hot elsewhere. Where the source
    splits the next target token into pieces (" D" "OOR" for " DOOR"), its distribution is over the first
    piece only, which the vocabulary map sends to a target token that is not the text's (" D"): the
    papers' rule keeps it (`same_next=None`)."""
    target_ids = np.asarray(target_ids, dtype=np.int64)
    length = len(target_ids)
    g = np.asarray(groups, dtype=np.int64).reshape(-1, 4)
    src_pos = np.full(length, -1, dtype=np.int64)
    single = g[:, 1] - g[:, 0] == 1  # one-to-one, or several source pieces -> one target token
    src_pos[g[single, 0]] = g[single, 3] - 1
    if same_next is not None:
        partner = np.full(length + 1, -2, dtype=np.int64)  # the source token that is the same as target token t
        one = g[single & (g[:, 3] - g[:, 2] == 1)]
        partner[one[:, 0]] = one[:, 2]
        pairs = np.asarray(same_next, dtype=np.int64).reshape(-1, 2)
        partner[pairs[:, 0]] = pairs[:, 1]
        keep = (src_pos >= 0) & (partner[1:] == src_pos + 1)
        src_pos[~keep] = -1
    has = np.flatnonzero(src_pos >= 0)
    ids = vocab_map[np.asarray(top_ids, dtype=np.int64)[src_pos[has]]]
    probs = np.exp(np.asarray(top_logprobs, dtype=np.float64)[src_pos[has]])
    rows = np.repeat(has, ids.shape[1])
    onehot = np.flatnonzero((src_pos < 0)[:-1])  # every position but the last predicts a token
    rows = np.concatenate([rows, onehot])
    all_ids = np.concatenate([ids.ravel(), target_ids[onehot + 1]])
    all_probs = np.concatenate([probs.ravel(), np.ones(len(onehot))])
    return _rows_top_k(rows, all_ids, all_probs, length, k)


def fusion_weights(ce, method: str) -> np.ndarray:
    """Per source, its weight in the fused distribution of one text (see the module docstring)."""
    ce = np.asarray(ce, dtype=np.float64)
    if method == "minCE":
        w = np.zeros(len(ce))
        w[int(np.argmin(ce))] = 1.0  # ties: the first source
        return w
    if method == "avgCE":
        z = np.exp(-(ce - ce.min()))
        return z / z.sum()
    raise ValueError(f"unknown fusion method {method!r}; use minCE or avgCE")


def fuse(dists: list[Sparse], ce, method: str = "minCE", k: int = 10) -> Sparse:
    """The fused distribution of one text from each source's (`to_target`) and its cross-entropy."""
    w = fusion_weights(ce, method)
    length = len(dists[0].ids)
    used = [(d, wi) for d, wi in zip(dists, w, strict=True) if wi > 0]
    rows = np.concatenate([np.repeat(np.arange(length), d.ids.shape[1]) for d, _ in used])
    ids = np.concatenate([d.ids.ravel() for d, _ in used])
    probs = np.concatenate([d.probs.ravel().astype(np.float64) * wi for d, wi in used])
    return _rows_top_k(rows, ids, probs, length, k)


def fusion_loss(logits, labels, fused_ids, fused_probs, lam: float = 0.9):
    """lam x CE(gold) + (1 - lam) x CE(fused, student), each the mean over the positions whose next
    token is a label (labels -100 elsewhere). `logits` [B, L, V]; `labels` [B, L] (the text's ids,
    unshifted, as for a causal LM); `fused_ids` [B, L, K] (-1: no entry) and `fused_probs` [B, L, K]
    the fused distribution at each position, predicting the next token. Computed in float32; the
    student's log-probabilities are gathered at the K ids only."""
    import torch.nn.functional as F

    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    gold = -logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    ids, probs = fused_ids[:, :-1], fused_probs[:, :-1].float()
    picked = logp.gather(-1, ids.clamp_min(0))
    soft = -(probs * picked * (ids >= 0)).sum(-1)
    n = mask.sum().clamp_min(1)
    return lam * (gold * mask).sum() / n + (1 - lam) * (soft * mask).sum() / n
