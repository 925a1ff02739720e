"""Prompt builder for the toy world: its tasks as Prompt rows (no download needed).

`split: fusion` is the pool the sources answer and the target is fused on; `split: eval`
is the held-out evaluation set (its own seeded generator, kept out of every other pool).

`with_response: true` also gives each prompt a reference response (`meta["response"]`): the
training text of explicit fusion (`explicit.corpus: prompts`). Real corpora are of mixed quality;
`near_miss: p` replaces a share p of those responses by a plausible wrong answer (`toyworld.mistakes`),
chosen by a seeded generator: the same rows on every run.
"""

from __future__ import annotations

import random

from fusechat3.errors import RecipeError
from fusechat3.schema import make_prompt
from fusechat3.toyworld import mistakes
from fusechat3.toyworld import tasks as T


def build(
    split: str = "fusion",
    per_domain: dict | int = 100,
    seed: int = 0,
    with_response: bool = False,
    near_miss: float = 0.0,
) -> list[dict]:
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
    if isinstance(near_miss, bool) or not isinstance(near_miss, int | float) or not 0 <= near_miss <= 1:
        raise RecipeError(f"toyworld builder: near_miss must be a fraction in [0, 1], got {near_miss!r}")
    if near_miss and not with_response:
        raise RecipeError(
            "toyworld builder: near_miss is the share of wrong reference responses: set with_response: true"
        )
    rng = random.Random(f"toyworld-responses:{split}:{seed}")
    rows = []
    for domain, n in counts.items():
        for t in T.split_tasks(domain, n, split, seed=seed):
            meta = {"family": t.family, "reference": t.reference}
            if with_response:
                wrong = rng.random() < near_miss
                meta["response"] = mistakes.near_miss(t, rng) if wrong else t.response
                meta["response_correct"] = not wrong
            rows.append(
                make_prompt(
                    domain=domain,
                    source_dataset=f"toyworld/{split}",
                    messages=[{"role": "user", "content": t.prompt}],
                    gold=t.gold,
                    tests=list(t.tests) if t.tests else None,
                    meta=meta,
                )
            )
    return rows
