"""The merge methods against independent float64 NumPy computations of their formulas: VaRM, SCE as the
FuseChat-2.0 code has it and as mergekit has it, Consensus TA (ours, registered in mergekit), and mergekit's
TIES and task arithmetic as `fusechat3 merge` runs them (float32). Random tensors of several shapes, plus
all-zero task vectors and ties in sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusechat3.merging.methods import register

register()

SHAPES = [(17,), (6, 5), (3, 4, 5)]
TOL = 1e-6


def _merge(tensors, method, **params):
    from mergekit.merge_methods.api import merge_tensors

    out = merge_tensors(list(tensors), method, base_index=0, parameters=params, dtype=torch.float32)
    return out.double().numpy()


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    scale = max(np.linalg.norm(ref), 1e-30)
    return float(np.linalg.norm(ours - ref) / scale)


def _inputs(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0])[:n]  # task vectors of different sizes
    return [base] + [base + s * torch.randn(shape, generator=g) for s in scales]


def _np(tensors):
    arr = [t.double().numpy() for t in tensors]
    return arr[0], np.stack([a - arr[0] for a in arr[1:]])


# ----------------------------------------------------------------------------- NumPy references


def ref_weights(d: np.ndarray) -> np.ndarray:
    w = (d**2).reshape(len(d), -1).mean(axis=1)
    return w / w.sum() if w.sum() > 0 else np.full(len(d), 1 / len(d))


def ref_varm(base, d):
    w = ref_weights(d)
    return base + np.tensordot(w, d, axes=1)


def ref_mask(d, tau):
    var = d.var(axis=0)
    if tau >= 1:
        return np.ones_like(var)
    k = int(tau * np.count_nonzero(var))
    mask = np.zeros(var.size)
    if k:
        mask[np.argsort(-var.reshape(-1), kind="stable")[:k]] = 1
    return mask.reshape(var.shape)


def ref_erase(d):
    elected = np.where(d.sum(axis=0) >= 0, 1.0, -1.0)
    return (np.sign(d) == elected).astype(float)


def ref_sce(base, d, tau, mask_deltas):
    m = ref_mask(d, tau)
    if mask_deltas:  # mergekit's sce
        d = d * m
        w = ref_weights(d)
    else:  # the FuseChat code
        w = ref_weights(d * m)
    we = w.reshape(-1, *[1] * (d.ndim - 1)) * ref_erase(d)
    div = we.sum(axis=0)
    if mask_deltas:
        div = np.maximum(div, 1e-6)
    else:
        div = np.where(div == 0, 1.0, div)
    return base + (we * d).sum(axis=0) / div


def ref_ties(base, d, density, weights, lam, normalize):
    trimmed = np.zeros_like(d)
    for i, di in enumerate(d):
        k = max(1, int(density * di.size)) if density < 1 else di.size
        keep = np.argsort(-np.abs(di).reshape(-1), kind="stable")[:k]
        flat = np.zeros(di.size)
        flat[keep] = di.reshape(-1)[keep]
        trimmed[i] = flat.reshape(di.shape)
    w = np.asarray(weights).reshape(-1, *[1] * (d.ndim - 1))
    wd = trimmed * w
    agree = ref_erase(wd)
    mixed = (wd * agree).sum(axis=0)
    if normalize:
        div = (np.broadcast_to(w, d.shape) * agree).sum(axis=0)
        mixed = mixed / np.where(div == 0, 1.0, div)
    return base + lam * mixed


def ref_consensus(base, d, k, lam, scaling):
    total = d.sum(axis=0)
    votes = (np.abs(d) > lam * np.abs(total - d)).sum(axis=0)
    return base + scaling * total * (votes >= k)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_varm_matches_numpy(shape, n):
    t = _inputs(shape, n, seed=n)
    assert _rel(_merge(t, "varm"), ref_varm(*_np(t))) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("method,mask_deltas", [("sce_fusechat", False), ("sce", True)])
def test_sce_variants_match_numpy(shape, tau, method, mask_deltas):
    t = _inputs(shape, 3, seed=7)
    ours = _merge(t, method, select_topk=tau)
    assert _rel(ours, ref_sce(*_np(t), tau, mask_deltas)) <= TOL


def test_the_two_sce_variants_differ_below_tau_1_and_agree_at_1():
    t = _inputs((8, 8), 3, seed=3)
    assert _rel(_merge(t, "sce_fusechat", select_topk=0.1), _merge(t, "sce", select_topk=0.1)) > 0.1
    assert _rel(_merge(t, "sce_fusechat", select_topk=1.0), _merge(t, "sce", select_topk=1.0)) <= TOL
    # mergekit's variant leaves the positions outside the top 10% at the base; FuseChat's moves them
    base, d = _np(t)
    outside = ref_mask(d, 0.1) == 0
    assert np.allclose(_merge(t, "sce", select_topk=0.1)[outside], base[outside])
    assert not np.allclose(_merge(t, "sce_fusechat", select_topk=0.1)[outside], base[outside])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density,normalize,lam", [(0.3, False, 0.4), (0.5, True, 1.0), (1.0, True, 1.0)])
def test_mergekit_ties_matches_numpy(shape, density, normalize, lam):
    t = _inputs(shape, 3, seed=11)
    weights = [1.0, 0.7, 0.4]
    ours = _merge(t, "ties", density=density, weight=weights, normalize=normalize, **{"lambda": lam})
    assert _rel(ours, ref_ties(*_np(t), density, weights, lam, normalize)) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_mergekit_task_arithmetic_matches_numpy(shape):
    t = _inputs(shape, 3, seed=5)
    base, d = _np(t)
    ours = _merge(t, "task_arithmetic", weight=[0.4, 0.3, 0.2])
    ref = base + np.tensordot(np.array([0.4, 0.3, 0.2]), d, axes=1)
    assert _rel(ours, ref) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_consensus_ta_matches_numpy(shape):
    t = _inputs(shape, 4, seed=2)
    ours = _merge(t, "consensus_ta", k=2, lam=0.2, scaling=0.4)
    assert _rel(ours, ref_consensus(*_np(t), 2, 0.2, 0.4)) <= TOL


@pytest.mark.parametrize(
    "method,params",
    [
        ("varm", {}),
        ("sce_fusechat", {"select_topk": 0.1}),
        ("sce", {"select_topk": 0.1}),
        ("consensus_ta", {}),
        ("ties", {"weight": 1.0, "density": 0.3}),
        ("task_arithmetic", {"weight": 1.0}),
    ],
)
def test_all_zero_task_vectors_give_the_base(method, params):
    base = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    out = _merge([base, base.clone(), base.clone()], method, **params)
    assert np.array_equal(out, base.double().numpy())


def test_ties_in_sign_elect_plus_and_zero_deltas_never_agree():
    """Where Σ δ = 0 the elected sign is +: only the positive task vector is kept there (both SCE variants
    and VaRM's plain weighted sum for contrast); a zero δ_i does not count in the divisor."""
    base = torch.zeros(4)
    x = torch.tensor([1.0, -2.0, 3.0, 0.5])
    m1, m2 = base + x, base - x  # δ_1 = −δ_2: every position is a tie
    b, d = _np([base, m1, m2])
    for method, mask_deltas in [("sce_fusechat", False), ("sce", True)]:
        ours = _merge([base, m1, m2], method, select_topk=1.0)
        ref = ref_sce(b, d, 1.0, mask_deltas)
        assert _rel(ours, ref) <= TOL
        assert np.allclose(ours, np.abs(x.numpy()))  # the + side wins at every position
    # a third model with a zero delta at position 0: not counted there
    m3 = base + torch.tensor([0.0, 1.0, 1.0, 1.0])
    ours = _merge([base, m1, m2, m3], "sce_fusechat", select_topk=1.0)
    assert _rel(ours, ref_sce(*_np([base, m1, m2, m3]), 1.0, False)) <= TOL
    assert _rel(_merge([base, m1, m2], "varm"), ref_varm(b, d)) <= TOL


def test_varm_weights_follow_the_size_of_the_task_vectors():
    """δ_2 = 3 δ_1: the weights are 1/10 and 9/10, not 1/2 each (the reference script's uniform weights)."""
    from fusechat3.merging.methods import energy_weights

    g = torch.Generator().manual_seed(1)
    base, delta = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    w = energy_weights(torch.stack([delta, 3 * delta]))
    assert torch.allclose(w, torch.tensor([0.1, 0.9]))
    out = _merge([base, base + delta, base + 3 * delta], "varm")
    assert np.allclose(out, (base + 2.8 * delta).numpy(), atol=1e-6)  # not the average's base + 2 δ
