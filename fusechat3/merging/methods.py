"""The merge methods this project adds to mergekit: VaRM, FuseChat's SCE and MergeBench's Consensus TA.

mergekit is the merging engine (its config format, streaming executor and every standard method:
linear, task_arithmetic, ties, dare_*, sce, slerp, ...). It has no VaRM, its `sce` is not the
FuseChat-2.0 code's variant, and it has no Consensus TA, so these three are written here as mergekit
kernels (`@merge_method`: one output tensor from its inputs' tensors) and registered in mergekit's
own registry by `register()`; a config names them like any mergekit method.

Every kernel computes in float32 (float64 if its inputs are float64), whatever the storage dtype,
and works on task vectors δ_i = θ_i − θ_base of one tensor:

- `varm` (FuseChat-1.0): w_i = mean(δ_i²) / Σ_j mean(δ_j²); θ = θ_base + Σ_i w_i δ_i.
- `sce_fusechat` (FuseChat-2.0's code): a mask M of the top-τ positions by variance of δ across models
  (τ = `select_topk`); w_i = mean((M·δ_i)²), normalised; E_i = [sign δ_i = sign Σ_j δ_j];
  θ = θ_base + Σ_i w_i E_i δ_i / Σ_i w_i E_i. The mask sets the weights only.
- mergekit's `sce` is the same with δ_i replaced by M·δ_i everywhere (positions outside the top τ keep
  θ_base). The two agree at τ = 1.
- `consensus_ta` (MergeBench's Consensus TA, TALL masks): m_i = [|δ_i| > λ·|Σ_j δ_j − δ_i|];
  θ = θ_base + s·[Σ_i m_i ≥ k]·Σ_i δ_i.

Sign ties follow mergekit and the FuseChat code: where Σ_j δ_j = 0 the elected sign is +, and a zero
δ_i never agrees with it. Where every weight is zero (all task vectors zero) the weights are uniform.
"""

from __future__ import annotations

import torch
from mergekit.merge_methods import BasePolicy, InputContract, TensorGroup, merge_method

_BASE = InputContract(base=BasePolicy.REQUIRED)


def task_vectors(group: TensorGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """(θ_base, δ stacked over the non-base inputs), in float32 (float64 stays float64)."""
    base = group.base.tensor
    acc = torch.float64 if base.dtype == torch.float64 else torch.float32
    b = base.to(acc)
    return b, torch.stack([e.tensor.to(acc) - b for e in group.non_base])


def energy_weights(deltas: torch.Tensor) -> torch.Tensor:
    """w_i ∝ mean(δ_i²), normalised over models; uniform when every δ_i is zero."""
    w = deltas.square().flatten(1).mean(1)
    total = w.sum()
    return w / total if total > 0 else torch.full_like(w, 1.0 / len(w))


def topk_variance_mask(deltas: torch.Tensor, tau: float) -> torch.Tensor:
    """1 at the top-τ fraction of the positions whose variance across models is nonzero, by that variance."""
    var = deltas.var(dim=0, unbiased=False)
    if tau >= 1:
        return torch.ones_like(var)
    k = int(tau * int(torch.count_nonzero(var)))
    mask = torch.zeros_like(var)
    if k > 0:
        mask.view(-1)[torch.topk(var.reshape(-1), k).indices] = 1
    return mask


def sign_agreement(deltas: torch.Tensor) -> torch.Tensor:
    """E_i = 1 where sign δ_i equals the elected sign of Σ_j δ_j (+ where that sum is 0), else 0."""
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return (deltas.sign() == elected).to(deltas.dtype)


def _broadcast(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return w.reshape(-1, *([1] * (like.dim() - 1)))


@merge_method(
    name="varm",
    pretty_name="VaRM (variation ratio merge, FuseChat-1.0)",
    reference_url="https://arxiv.org/abs/2402.16107",
    contract=_BASE,
)
def varm(group: TensorGroup) -> torch.Tensor:
    base, deltas = task_vectors(group)
    w = _broadcast(energy_weights(deltas), deltas)
    return base + (w * deltas).sum(dim=0)


@merge_method(
    name="sce_fusechat",
    pretty_name="SCE as in the FuseChat-2.0 code (the top-tau mask sets the weights only)",
    reference_url="https://arxiv.org/abs/2408.07990",
    contract=_BASE,
)
def sce_fusechat(group: TensorGroup, select_topk: float = 1.0) -> torch.Tensor:
    base, deltas = task_vectors(group)
    mask = topk_variance_mask(deltas, select_topk)
    w = _broadcast(energy_weights(deltas * mask), deltas) * sign_agreement(deltas)
    divisor = w.sum(dim=0)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return base + (w * deltas).sum(dim=0) / divisor


@merge_method(
    name="consensus_ta",
    pretty_name="Consensus Task Arithmetic (TALL masks, as MergeBench runs it)",
    reference_url="https://arxiv.org/abs/2405.07813",
    contract=_BASE,
)
def consensus_ta(group: TensorGroup, k: int = 2, lam: float = 0.2, scaling: float = 0.4) -> torch.Tensor:
    base, deltas = task_vectors(group)
    total = deltas.sum(dim=0)
    votes = (deltas.abs() > lam * (total - deltas).abs()).sum(dim=0)
    return base + scaling * total * (votes >= k).to(deltas.dtype)


OURS = (varm, sce_fusechat, consensus_ta)


def register() -> None:
    """Put our methods in mergekit's registry (once per process), so a config can name them."""
    from mergekit import merge_methods

    known = {m.spec.name for m in merge_methods.registered_methods()}
    for method in OURS:
        if method.spec.name not in known:
            merge_methods.register(method)


def method_names() -> list[str]:
    """Every merge method a config may name: mergekit's and ours."""
    from mergekit import merge_methods

    register()
    return sorted(m.spec.name for m in merge_methods.registered_methods())
