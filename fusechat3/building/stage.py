"""The `build` stage: apply the FuseChat-3.0 rules to the scored samples and write the
training sets in TRL's formats: `build/sft.parquet`, `build/dpo.parquet`; when the recipe
samples the target itself (a source with `role: target`), `build/wrpo.parquet` (DPO rows plus
`source_chosen`); and when controls are on, `build/control-<source>.parquet` (the SFT rows
the same rules pick from that one source's responses: the single-source baselines).
"""

from __future__ import annotations

import time
from pathlib import Path

from fusechat3.building.rules import BuildConfig, build_sets
from fusechat3.run import Run, log, print_summary


def build_config(run: Run, only_source: str | None = None) -> BuildConfig:
    b = run.recipe.building
    return BuildConfig(
        sft_fraction=dict(b.sft_fraction),
        reward_gap=tuple(b.reward_gap),
        reward_gap_per_domain={d: (tuple(v) if v is not None else None) for d, v in b.reward_gap_per_domain.items()},
        sft_only_domains=tuple(b.sft_only_domains),
        sft_only_source=b.zh_source,
        only_source=only_source,
        target_source=run.recipe.target_samples.name if run.recipe.target_samples else None,
        seed=b.seed,
        heldout_fraction=b.heldout_fraction,
    )


def control_sources(run: Run) -> list[str]:
    c = run.recipe.controls
    if not c.enabled:
        return []
    return list(c.sources) if c.sources is not None else [s.name for s in run.recipe.fusion_sources]


def run_build(run: Run) -> None:
    stage = run.stage("build")
    if stage.done():
        log("build: done already")
        return
    t0 = time.time()
    prompts = run.read("prompts")
    samples = [s for src in run.recipe.sources for s in run.read(f"sample/{src.name}")]
    scores = run.read("score")
    result = build_sets(prompts, samples, scores, build_config(run))
    stage.write_shard("sft", result.sft)
    stage.write_shard("dpo", result.dpo)
    if build_config(run).target_source is not None:
        stage.write_shard("wrpo", result.wrpo)
    for name, rows in result.heldout.items():
        stage.write_shard(f"{name}-heldout", rows)
    controls = {}
    for name in control_sources(run):
        only = build_sets(prompts, samples, scores, build_config(run, only_source=name))
        stage.write_shard(f"control-{name}", only.sft)
        controls[name] = {"sft": len(only.sft), "stats": only.stats}
    secs = time.time() - t0
    counts = {"sft": len(result.sft), "dpo": len(result.dpo)}
    if build_config(run).target_source is not None:
        counts["wrpo"] = len(result.wrpo)
    counts.update({f"{name}-heldout": len(rows) for name, rows in result.heldout.items()})
    stage.finish({**counts, "stats": result.stats, "controls": controls})
    rows: list[tuple[str, object]] = []
    for domain in sorted(result.stats["prompts"]):
        rows.append(
            (
                f"{domain}: prompts -> sft / dpo",
                f"{result.stats['prompts'][domain]} -> {result.stats['sft'].get(domain, 0)} / {result.stats['dpo'].get(domain, 0)}",
            )
        )
        if "wrpo" in result.stats:
            rows.append((f"{domain}: wrpo triplets", result.stats["wrpo"][domain]))
            for reason, n in sorted(result.stats["wrpo_drops"][domain].items()):
                rows.append((f"  wrpo dropped: {reason}", n))
        for reason, n in sorted(result.stats["drops"].get(domain, {}).items()):
            rows.append((f"  prompts dropped: {reason}", n))
        for reason, n in sorted(result.stats["invalid"].get(domain, {}).items()):
            rows.append((f"  responses unusable: {reason}", n))
    for name, held in result.heldout.items():
        rows.append((f"held out of {name} (build/{name}-heldout.parquet)", len(held)))
    for name, c in controls.items():
        rows.append((f"control {name}: sft rows", c["sft"]))
    print_summary("build", rows, secs)


def training_file(run: Run, shard: str) -> str:
    """The parquet file of one of the build stage's sets (sft, dpo, control-<source>)."""
    path = Path(run.dir.root) / "build" / f"{shard}.parquet"
    if not path.is_file():
        raise ValueError(f"{path} is missing: run `fusechat3 build {run.recipe.path or '<recipe>'}` first")
    return str(path)
