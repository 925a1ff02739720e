"""The `prompts` and `sample` stages: build the prompt set, then sample N responses per
prompt from each source, shard by shard, so that a killed run loses one shard at most.

`sample` writes `runs/<name>/sample/<source>/<shard>.parquet`. `--shard i/n` lets n
processes (or machines on a shared filesystem) split one source's shards; whichever
writes the last shard marks the stage finished.
"""

from __future__ import annotations

import time
from collections import Counter

from fusechat3.recipe import as_dict, resolve_model
from fusechat3.run import Run, log, print_summary
from fusechat3.schema import make_sample, stable_hash


def run_prompts(run: Run) -> None:
    from data_builders import collect

    stage = run.stage("prompts")
    if stage.done():
        log("prompts: done already")
        return
    t0 = time.time()
    rows, dup = collect(run.recipe.prompts, f"{run.recipe.path}: prompts")
    stage.write_shard("prompts", rows)
    by_domain = Counter(r["domain"] for r in rows)
    summary = {"rows_out": len(rows), "skipped": {"duplicate_prompt": dup}, "domains": dict(by_domain)}
    stage.finish(summary)
    print_summary(
        "prompts",
        [*((f"prompts ({d})", n) for d, n in sorted(by_domain.items())), ("skipped: duplicate prompt", dup)],
        time.time() - t0,
    )


def shard_ranges(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(i, min(i + shard_size, n_rows)) for i in range(0, n_rows, shard_size)]


def run_sample(run: Run, source: str | None = None, shard: tuple[int, int] | None = None) -> None:
    """Sample every source (or one), every shard (or those with index % n == i)."""
    from fusechat3.sampling import GenParams, get_sampler

    recipe = run.recipe
    prompts = run.read("prompts")
    names = [source] if source else [s.name for s in recipe.sources]
    for name in names:
        spec = recipe.source(name)
        stage = run.stage(f"sample/{name}")
        if stage.done():
            log(f"sample/{name}: done already")
            continue
        t0 = time.time()
        wanted = [p for p in prompts if spec.domains is None or p["domain"] in spec.domains]
        ranges = shard_ranges(len(wanted), recipe.sampler.shard_size)
        todo = [
            (k, lo, hi)
            for k, (lo, hi) in enumerate(ranges)
            if (shard is None or k % shard[1] == shard[0]) and not stage.has_shard(f"shard-{k:05d}")
        ]
        base = {k: v for k, v in as_dict(spec.sampling).items() if k != "n_per_domain"}
        sampling_key = stable_hash({"model": spec.model, "sampling": as_dict(spec.sampling)}, 12)
        stats: Counter = Counter()
        if todo:
            log(f"sample/{name}: {len(todo)} of {len(ranges)} shards to do ({len(wanted)} prompts)")
            sampler = get_sampler(
                recipe.sampler.backend, resolve_model(spec.model), seed=spec.sampling.seed, **recipe.sampler.engine
            )
            try:
                for k, lo, hi in todo:
                    chunk = wanted[lo:hi]
                    rows: list[dict] = []
                    # One request per group of prompts that want the same n (n depends on the domain).
                    for n in sorted({spec.sampling.n_for(p["domain"]) for p in chunk}):
                        group = [p for p in chunk if spec.sampling.n_for(p["domain"]) == n]
                        params = GenParams(**{**base, "n": n})
                        outs = sampler.generate([p["messages"] for p in group], params)
                        for p, comps in zip(group, outs, strict=True):
                            for idx, c in enumerate(comps):
                                rows.append(
                                    make_sample(
                                        prompt_id=p["prompt_id"],
                                        model=name,
                                        sample_idx=idx,
                                        text=c.text,
                                        finish_reason=c.finish_reason,
                                        num_tokens=c.num_tokens,
                                        sampling_key=sampling_key,
                                    )
                                )
                    rows.sort(key=lambda r: (r["prompt_id"], r["sample_idx"]))
                    stage.write_shard(f"shard-{k:05d}", rows)
                stats.update(getattr(sampler, "stats", {}))
            finally:
                sampler.close()
        if all(stage.has_shard(f"shard-{k:05d}") for k in range(len(ranges))):
            rows = stage.read()
            finish = Counter(r["finish_reason"] for r in rows)
            tokens = sum(r["num_tokens"] for r in rows)
            secs = time.time() - t0
            stage.finish(
                {
                    "prompts": len(wanted),
                    "rows_out": len(rows),
                    "finish_reason": dict(finish),
                    "tokens": tokens,
                    "backend_stats": {k: int(v) for k, v in stats.items()},
                    "seconds": round(secs, 1),
                }
            )
            print_summary(
                f"sample/{name}",
                [
                    ("prompts", len(wanted)),
                    ("responses", len(rows)),
                    *((f"finish: {k}", v) for k, v in sorted(finish.items())),
                    ("generated tokens", tokens),
                    ("tokens/s (this run)", f"{tokens / max(secs, 1e-9):.0f}" if todo else "-"),
                ],
                secs,
            )
        else:
            log(f"sample/{name}: this process's shards are written; others are still missing")
