"""Prompt builder for the toy world: its tasks as Prompt rows (no download needed).

`split: fusion` is the pool the sources answer and the target is fused on; `split: eval`
is the held-out evaluation set (its own seeded generator, kept out of every other pool).
"""

from __future__ import annotations

from fusechat3.errors import RecipeError
from fusechat3.schema import make_prompt
from fusechat3.toyworld import tasks as T


def build(split: str = "fusion", per_domain: dict | int = 100, seed: int = 0) -> list[dict]:
    counts = per_domain if isinstance(per_domain, dict) else {d: per_domain for d in T.FAMILIES}
    unknown = sorted(set(counts) - set(T.FAMILIES))
    if unknown:
        raise RecipeError(f"toyworld builder: unknown domain(s) {unknown} in per_domain; use {list(T.FAMILIES)}")
    bad = {d: n for d, n in counts.items() if isinstance(n, bool) or not isinstance(n, int) or n < 0}
    if bad:
        raise RecipeError(
            f"toyworld builder: per_domain must be an integer >= 0 or a mapping of domain to one, got {per_domain!r}"
        )
    if split not in T.SPLIT_SEEDS:
        raise RecipeError(f"toyworld builder: unknown split {split!r}; use one of {sorted(T.SPLIT_SEEDS)}")
    rows = []
    for domain, n in counts.items():
        for t in T.split_tasks(domain, n, split, seed=seed):
            rows.append(
                make_prompt(
                    domain=domain,
                    source_dataset=f"toyworld/{split}",
                    messages=[{"role": "user", "content": t.prompt}],
                    gold=t.gold,
                    tests=list(t.tests) if t.tests else None,
                    meta={"family": t.family, "reference": t.reference},
                )
            )
    return rows
