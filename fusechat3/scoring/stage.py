"""The `score` stage: every sampled response gets a reward-model score and, where the
domain has a check, a correctness verdict (math vs gold, code vs tests in the sandbox).

Works shard by shard over the samples (sorted by their key), so a killed run resumes at
the shard in flight. Rows: `fusechat3.schema.make_score`.
"""

from __future__ import annotations

import time
from collections import Counter

from fusechat3.recipe import resolve_model
from fusechat3.run import Run, log, print_summary
from fusechat3.schema import assistant, make_score, sample_key
from fusechat3.scoring.verify import verify_many


def run_score(run: Run) -> None:
    recipe = run.recipe
    stage = run.stage("score")
    if stage.done():
        log("score: done already")
        return
    t0 = time.time()
    prompts = {p["prompt_id"]: p for p in run.read("prompts")}
    samples = sorted((s for src in recipe.sources for s in run.read(f"sample/{src.name}")), key=sample_key)
    size = recipe.scoring.shard_size
    todo = [k for k in range(0, len(samples), size) if not stage.has_shard(f"shard-{k // size:05d}")]
    rm = None
    if todo:
        from fusechat3.scoring.reward import RewardModel

        spec = recipe.scoring.reward_model
        log(f"score: {len(todo)} of {-(-len(samples) // size)} shards to do ({len(samples)} responses)")
        rm = RewardModel(
            resolve_model(spec.model),
            batch_size=spec.batch_size,
            max_length=spec.max_length,
            dtype=spec.dtype,
            trust_remote_code=spec.trust_remote_code,
        )
    try:
        for k in todo:
            chunk = samples[k : k + size]
            chunk_prompts = [prompts[s["prompt_id"]] for s in chunk]
            # Only finished, non-empty responses are worth a forward pass; the rest are counted.
            live = [i for i, s in enumerate(chunk) if s["finish_reason"] == "stop" and s["text"].strip()]
            rewards: dict[int, tuple[float | None, str]] = {}
            if live:
                convs = [chunk_prompts[i]["messages"] + [assistant(chunk[i]["text"])] for i in live]
                rewards = dict(zip(live, rm.score(convs), strict=True))
            checks = verify_many(
                chunk_prompts,
                [s["text"] for s in chunk],
                timeout_s=recipe.scoring.code.timeout_s,
                memory_mb=recipe.scoring.code.memory_mb,
                workers=recipe.scoring.code.workers,
            )
            rows = []
            for i, s in enumerate(chunk):
                reward, why = rewards.get(i, (None, "empty" if s["finish_reason"] == "stop" else s["finish_reason"]))
                correct, verdict = checks[i]
                if reward is None and verdict in ("unchecked",):
                    verdict = why
                rows.append(
                    make_score(
                        prompt_id=s["prompt_id"],
                        model=s["model"],
                        sample_idx=s["sample_idx"],
                        reward=reward,
                        correct=correct,
                        verdict=verdict if s["finish_reason"] == "stop" else s["finish_reason"],
                    )
                )
            stage.write_shard(f"shard-{k // size:05d}", rows)
    finally:
        if rm is not None:
            rm.close()
    rows = stage.read()
    verdicts = Counter(r["verdict"] for r in rows)
    no_reward = sum(r["reward"] is None for r in rows)
    secs = time.time() - t0
    stage.finish(
        {
            "rows_in": len(samples),
            "rows_out": len(rows),
            "verdicts": dict(verdicts),
            "no_reward": no_reward,
            "seconds": round(secs, 1),
        }
    )
    print_summary(
        "score",
        [
            ("responses", len(rows)),
            ("no reward (skipped later)", no_reward),
            *((f"verdict: {k}", v) for k, v in verdicts.most_common()),
        ],
        secs,
    )
