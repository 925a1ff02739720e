"""The `build` stage: apply the FuseChat-3.0 rules to the scored samples and write the
training sets in TRL's formats: `build/sft.parquet`, `build/dpo.parquet`; when the recipe
samples the target itself (a source with `role: target`), `build/wrpo.parquet` (DPO rows plus
`source_chosen`); and when controls are on, `build/control-<source>.parquet` (the SFT rows
the same rules pick from that one source's responses: the single-source baselines).
"""

from __future__ import annotations

import time

from fusechat3.building.rules import build_sets
from fusechat3.recipe import Recipe, as_dict
from fusechat3.run import Run, log, print_summary
from fusechat3.stages import IMPLICIT_OFF, StageDef, implicit


def _target_source(run: Run) -> str | None:
    return run.recipe.target_samples.name if run.recipe.target_samples else None


def control_sources(recipe: Recipe) -> list[str]:
    """The sources that get a single-source control (none unless controls.enabled)."""
    c = recipe.controls
    if not c.enabled or recipe.scoring is None:
        return []
    return list(c.sources) if c.sources is not None else [s.name for s in recipe.fusion_sources]


def run_build(run: Run) -> None:
    stage = run.stage(BUILD.name)
    if stage.done():
        log("build: done already")
        return
    t0 = time.time()
    prompts = run.read("prompts")
    samples = [s for part in run.parts("sample") for s in run.read(part)]
    scores = run.read("score")
    spec, target = run.recipe.building, _target_source(run)
    result = build_sets(prompts, samples, scores, spec, target_source=target)
    # Each set is one shard of the stage, named as its declared output file (build/<set>.parquet).
    stage.write_shard("sft", result.sft)
    stage.write_shard("dpo", result.dpo)
    if target is not None:
        stage.write_shard("wrpo", result.wrpo)
    for name, rows in result.heldout.items():
        stage.write_shard(f"{name}-heldout", rows)
    controls = {}
    for name in control_sources(run.recipe):
        only = build_sets(prompts, samples, scores, spec, only_source=name, target_source=target)
        stage.write_shard(f"control-{name}", only.sft)
        controls[name] = {"sft": len(only.sft), "stats": only.stats}
    secs = time.time() - t0
    counts = {"sft": len(result.sft), "dpo": len(result.dpo)}
    if target is not None:
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


BUILD = StageDef(
    name="build",
    help="build the SFT, DPO (and WRPO) sets by the FuseChat-3.0 rules",
    enabled=implicit,
    disabled_reason=IMPLICIT_OFF,
    run=run_build,
    reads=("prompts", "sample", "score"),
    settings=lambda run, part: {
        "building": as_dict(run.recipe.building),
        "target_samples": _target_source(run),
        "controls": control_sources(run.recipe),
    },
    outputs={
        "sft": "sft.parquet",
        "dpo": "dpo.parquet",
        "wrpo": "wrpo.parquet",
        "heldout": "{set}-heldout.parquet",  # set: sft, dpo, wrpo (building.heldout_fraction > 0)
        "control": "control-{source}.parquet",  # one source's SFT rows (controls.enabled)
    },
)
