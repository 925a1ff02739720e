"""The `prompts` stage: every spec's data builder (data_builders/), then the shared steps
(math/code removal, decontamination, dedup, limit and fraction: data_builders._steps). Kept rows
and skips by reason, per spec and per domain, go to the stage's summary and
`runs/<name>/prompts/summary.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fusechat3.recipe import as_dict
from fusechat3.run import Run, log, print_summary
from fusechat3.stages import StageDef


def run_prompts(run: Run) -> None:
    from data_builders import collect
    from data_builders._steps import prepare, report_lines
    from fusechat3.store import atomic_write

    recipe = run.recipe
    stage = run.stage(PROMPTS.name)
    if stage.done():
        log("prompts: done already")
        return
    t0 = time.time()
    built = collect(recipe.prompts, f"{recipe.path}: prompts")
    benchmark, ngram = None, 13
    if recipe.decontamination is not None:
        found = collect(recipe.decontamination.prompts, f"{recipe.path}: decontamination.prompts")
        benchmark, ngram = [row for b in found for row in b.rows], recipe.decontamination.ngram
    rows, summary = prepare(recipe.prompts, built, seed=recipe.seed, benchmark=benchmark, ngram=ngram)
    stage.write_shard("prompts", rows)
    summary["seconds"] = round(time.time() - t0, 1)
    stage.finish(summary)
    text = json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False).encode()
    atomic_write(run.output(PROMPTS.name, "summary"), lambda f: f.write(text))
    print_summary("prompts", report_lines(summary), time.time() - t0)


def _settings(run: Run, part: str | None) -> dict:
    r = run.recipe
    benchmark = r.decontamination.prompts if r.decontamination else []
    return {
        "prompts": as_dict(r.prompts),
        "decontamination": as_dict(r.decontamination),
        "seed": r.seed,
        "files": [_local_files(spec.args) for spec in [*r.prompts, *benchmark]],
    }


def _local_files(args: dict) -> list:
    """(path, size, mtime) of the local files a builder's arguments name: an edited prompts
    file changes the prompts stage's key, so it is rebuilt instead of silently reused."""
    out = []
    for value in args.values():
        if not isinstance(value, str) or not value or "\n" in value:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            continue  # a Hub id or a name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return out


PROMPTS = StageDef(
    name="prompts",
    help="build the prompt set from the recipe's data builders",
    run=run_prompts,
    settings=_settings,
    outputs={"rows": "prompts.parquet", "summary": "summary.json"},
    enabled=lambda recipe: bool(recipe.prompts),
    disabled_reason="the recipe has no prompts (an evaluation-only recipe)",
)
