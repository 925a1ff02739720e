"""The toy judge on the sources' real samples: how often it ranks a right instruction response above a
wrong one of the same prompt, by the kind of the wrong one, and what that does to best-of-N.

`fusechat3 toyworld judge` measures the judge on our own near misses; this reads a finished run's
`score` stage instead (every sample's reward, and whether it matches the prompt's reference), so
it measures the judge on the errors the sources really make. The kind of a wrong response is read
off its words against the reference: `order` (the same words, another order), `repeat` (a word
written twice where the reference has it once), `drop`/`extra` (a subset / superset of the words),
`form` (the same words in another case or form), `other`.

    make demo && python benchmarks/toy_judge_on_samples.py runs/toyworld-imf
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from itertools import combinations
from pathlib import Path


def kind_of(wrong: str, right: str) -> str:
    w, r = wrong.split(), right.split()
    if sorted(w) == sorted(r):
        return "order"
    if [x.lower() for x in w] == [x.lower() for x in r] or [x[:1] for x in w] == [x[:1] for x in r]:
        return "form"
    if len(w) == len(r) and len(set(w)) < len(w) and len(set(w)) < len(set(r)):
        return "repeat"
    if Counter(w) < Counter(r):
        return "drop"
    if Counter(r) < Counter(w):
        return "extra"
    return "other"


def main() -> None:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    prompts = pd.read_parquet(args.run_dir / "prompts" / "prompts.parquet")
    prompts = prompts[prompts.domain == "instruction"]
    reference = {p: json.loads(m)["reference"] for p, m in zip(prompts.prompt_id, prompts.meta, strict=True)}
    samples = pd.concat(pd.read_parquet(f) for f in sorted((args.run_dir / "sample").glob("*/shard-*.parquet")))
    scores = pd.concat(pd.read_parquet(f) for f in sorted((args.run_dir / "score").glob("shard-*.parquet")))
    rows = samples.merge(scores, on=["prompt_id", "model", "sample_idx"])
    rows = rows[rows.prompt_id.isin(reference) & rows.reward.notna()]

    right_total, pairs = Counter(), Counter()
    best_wrong = prompts_with_right = 0
    for pid, group in rows.groupby("prompt_id"):
        texts = dict(zip(group.text.str.strip(), group.reward, strict=False))  # distinct texts: one reward each
        ref = str(reference[pid]).strip()
        if ref not in texts:
            continue
        prompts_with_right += 1
        best_wrong += max(texts, key=texts.get) != ref
        for a, b in combinations(texts, 2):
            if ref in (a, b):
                wrong = b if a == ref else a
                kind = kind_of(wrong, ref)
                pairs[kind] += 1
                right_total[kind] += texts[ref] > texts[wrong]
    n = sum(pairs.values())
    print(f"{args.run_dir}: {n} (right, wrong) pairs of distinct responses on {prompts_with_right} instruction prompts")
    print(f"pairwise accuracy {100 * sum(right_total.values()) / max(n, 1):.1f}%")
    for kind in sorted(pairs, key=lambda k: -pairs[k]):
        print(f"  {kind:6s} {pairs[kind]:5d} pairs, {100 * right_total[kind] / pairs[kind]:.1f}% ranked right")
    print(
        f"best-of-N: on {best_wrong} of the {prompts_with_right} prompts with a right response, the judge's top "
        f"response is wrong ({100 * best_wrong / max(prompts_with_right, 1):.1f}%)"
    )


if __name__ == "__main__":
    main()
