"""The toy judge's training variants, side by side: held-out pairwise accuracy of each, per kind.

Every variant trains a reward model from `build.REWARD_SPEC` (its size, data and seed) with
`judge.train_reward`, changing one or two things (`judge.JudgeTraining`, or the spec), for the
same number of reward-training steps, and is scored by `judge.accuracy_of` on the 800 held-out
(right, near-miss) pairs that `fusechat3 toyworld judge` uses. Two variants train at once, one
process and one thread each; a variant takes 2-5 minutes on this 2-core machine at 2,000 steps.

    python benchmarks/toy_judge_variants.py                         # every variant, 2,000 steps
    python benchmarks/toy_judge_variants.py --variants base,lm-first --steps 5000
    python benchmarks/toy_judge_variants.py --variants lm-first+loss/local-labels

What it answered: which change moves the kinds the causal judge missed (a swapped or a repeated word: the
order and content of the answer, not its form). The bidirectional encoder did (99.0% at 15,000 steps), and
is what the toy world ships now. Figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONTENT = ("swap", "replace", "repeat", "copy")
# The causal judge the toy world shipped before the bidirectional one (a 4-layer Llama, lr 2e-3); the
# variants below change it one or two things at a time.
CAUSAL = {"arch": "llama", "lr": 2e-3}
# name -> (JudgeTraining fields, ModelSpec fields); names have no commas (--variants splits on them)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),  # the shipped recipe (build.REWARD_SPEC), at --steps
    "causal": ({}, CAUSAL),
    "lm-loss": ({"lm_weight": 1.0}, CAUSAL),
    "lm-first": ({"lm_steps": 1500}, CAUSAL),
    "lm-first+loss": ({"lm_steps": 1500, "lm_weight": 1.0}, CAUSAL),
    "lm-first+loss/lr5e-4": ({"lm_steps": 2000, "lm_weight": 1.0}, {**CAUSAL, "lr": 5e-4}),
    "lm-first+loss/lr1e-4": ({"lm_steps": 2000, "lm_weight": 1.0}, {**CAUSAL, "lr": 1e-4}),
    "lm-first+loss/6-layers": ({"lm_steps": 2000, "lm_weight": 1.0}, {**CAUSAL, "lr": 5e-4, "layers": 6}),
    "lm-first+loss/local-labels": ({"lm_steps": 2000, "lm_weight": 1.0, "labels": "local"}, {**CAUSAL, "lr": 5e-4}),
    "lm-first+loss/content-kinds": ({"lm_steps": 2000, "lm_weight": 1.0, "kinds": CONTENT}, {**CAUSAL, "lr": 5e-4}),
    # The bidirectional encoder the toy world ships (BertForSequenceClassification, the score on the pooled
    # first token); at the causal judge's lr of 2e-3 it collapsed to a constant score in a first try.
    "bert": ({}, {"arch": "bert", "lr": 5e-4}),
}


def _run(name: str, steps: int, seed: int) -> dict:
    import torch

    from fusechat3.toyworld.build import REWARD_SPEC
    from fusechat3.toyworld.judge import JudgeTraining, accuracy_of, train_reward

    torch.set_num_threads(1)
    how, spec_changes = VARIANTS[name]
    spec = replace(REWARD_SPEC, steps=steps, **spec_changes)
    t0 = time.time()
    model, tok = train_reward(spec, seed, log=lambda _: None, how=JudgeTraining(**how))
    return {"variant": name, "seconds": round(time.time() - t0), **accuracy_of(model.eval(), tok)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=2000, help="reward-training steps of every variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"toy_judge_variants: unknown variant(s) {unknown}; use {list(VARIANTS)}")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run, v, args.steps, args.seed) for v in names]
        results = [f.result() for f in futures]
    kinds = list(results[0]["per_kind"])
    print(f"held-out pairwise accuracy (%), {results[0]['pairs']} pairs, {args.steps} reward-training steps")
    print(f"| variant | all | {' | '.join(kinds)} | s |")
    print("|---|---|" + "---|" * len(kinds) + "---|")
    for r in results:
        cells = " | ".join(f"{100 * r['per_kind'][k]:.0f}" for k in kinds)
        print(f"| {r['variant']} | {100 * r['accuracy']:.1f} | {cells} | {r['seconds']} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
