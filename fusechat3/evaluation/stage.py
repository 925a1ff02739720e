"""The `eval` stage: held-out accuracy per domain of every model of a run, with the same
verifiers that scoring uses, written as `runs/<name>/eval/scoreboard.json`:

    {"models": {"<model>": {"<domain>": accuracy, ..., "average": mean over domains}, ...},
     "n": {"<domain>": prompts}}

Models (`run.model_names`): `target_before` (the untrained target), the models the training
stages make (`target_sft`, `target_dpo`, `target_wrpo`, one `target_single_<source>` per
control, the fused and merged targets of the explicit path), and each source by its own name. Each
model is sampled greedily with its own chat template; each is its own resumable stage (`eval/<model>`).
For merged models the scoreboard also has `"normalized"`: MergeBench's normalized performance.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from fusechat3.recipe import as_dict
from fusechat3.run import Run, log, model_names
from fusechat3.scoring.verify import verify_many
from fusechat3.stages import StageDef, require_enabled


def eval_prompt_rows(run: Run) -> list[dict]:
    """The held-out prompts: each eval spec's rows (its `limit`/`fraction` applied); skips are logged."""
    from data_builders import collect
    from data_builders._steps import select

    rows: list[dict] = []
    specs = run.recipe.eval.prompts
    for i, (spec, built) in enumerate(zip(specs, collect(specs, f"{run.recipe.path}: eval.prompts"), strict=True)):
        chosen = select(built.rows, limit=spec.limit, fraction=spec.fraction, seed=run.recipe.seed)
        skipped = {**built.skipped, "over_limit": len(built.rows) - len(chosen)}
        if any(skipped.values()):
            log(f"eval.prompts[{i}] {spec.builder}: {len(chosen)} prompts, skipped {skipped}")
        rows += chosen
    return rows


def run_eval(run: Run, only: list[str] | None = None) -> dict:
    from pathlib import Path

    from fusechat3.sampling import get_sampler

    recipe = run.recipe
    require_enabled(run, EVAL)
    prompts = eval_prompt_rows(run)
    sp = recipe.eval.sampling
    params = sp.with_n(1)
    board: dict[str, dict[str, float]] = {}
    for name, path in run.models().items():
        if only and name not in only:
            continue
        made_by_run = name.startswith("target_") and name != "target_before"
        if made_by_run and not (Path(path) / "config.json").is_file():
            log(f"eval: {name} skipped: no model at {path} (run its stage first)")
            continue
        stage = run.stage(f"{EVAL.name}/{name}")
        if not stage.done():
            t0 = time.time()
            log(f"eval: {name} on {len(prompts)} held-out prompts")
            # A source is evaluated the way it is sampled (its own backend, engine, template).
            backend, engine, template = _how_sampled(run, name)
            sampler = get_sampler(backend, path, chat_template=template, **engine)
            try:
                outs = sampler.generate([p["messages"] for p in prompts], params)
            finally:
                sampler.close()
            texts = [o[0].text if o[0].finish_reason == "stop" else "" for o in outs]
            checks = verify_many(prompts, texts, **recipe.checks, batch_size=recipe.sandbox_batch_size)
            rows = [
                {
                    "prompt_id": p["prompt_id"],
                    "domain": p["domain"],
                    "model": name,
                    "text": o[0].text,
                    "finish_reason": o[0].finish_reason,
                    "correct": bool(c),
                    "verdict": v if o[0].finish_reason == "stop" else o[0].finish_reason,
                }
                for p, o, (c, v) in zip(prompts, outs, checks, strict=True)
            ]
            stage.write_shard("results", rows)
            stage.finish({"accuracy": _accuracy(rows), "seconds": round(time.time() - t0, 1)})
        board[name] = stage.summary()["accuracy"]
    n = defaultdict(int)
    for p in prompts:
        n[p["domain"]] += 1
    result = {"models": board, "n": dict(n)}
    normalized = normalized_performance(run.recipe, board)
    if normalized:
        result["normalized"] = normalized
    out = run.output(EVAL.name, "scoreboard")
    out.write_text(json.dumps(result, indent=1))
    print_scoreboard(result)
    log(f"scoreboard written to {out}")
    return result


def normalized_performance(recipe, board: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """MergeBench's normalized performance of each merged model: per domain, its accuracy over the best of its
    inputs' (None where every input scores 0); "average" is the mean over domains of those ratios."""
    from fusechat3.stages import stages

    out: dict[str, dict[str, float | None]] = {}
    for stage in stages().values():
        if stage.merged_from is None or not stage.enabled(recipe):
            continue
        for model, inputs in stage.merged_from(recipe).items():
            if model not in board or not all(i in board for i in inputs):
                continue
            ratios: dict[str, float | None] = {}
            for domain, acc in board[model].items():
                if domain == "average":
                    continue
                best = max(board[i].get(domain, 0.0) for i in inputs)
                ratios[domain] = round(acc / best, 4) if best > 0 else None
            known = [v for v in ratios.values() if v is not None]
            ratios["average"] = round(sum(known) / len(known), 4) if known else None
            out[model] = ratios
    return out


def _accuracy(rows: list[dict]) -> dict[str, float]:
    by: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by[r["domain"]].append(r["correct"])
    acc = {d: round(sum(v) / len(v), 4) for d, v in sorted(by.items())}
    acc["average"] = round(sum(acc.values()) / len(acc), 4) if acc else 0.0
    return acc


def print_scoreboard(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    models = result["models"]
    domains = sorted({d for acc in models.values() for d in acc if d != "average"})
    table = Table(title="scoreboard: held-out accuracy (%)", title_justify="left")
    table.add_column("model")
    for d in [*domains, "average"]:
        table.add_column(d, justify="right")
    for name, acc in models.items():
        table.add_row(name, *(f"{100 * acc.get(d, 0):.1f}" for d in [*domains, "average"]))
    Console().print(table)
    if result.get("normalized"):
        norm = Table(title="normalized performance (merged / best input, per domain)", title_justify="left")
        norm.add_column("model")
        for d in [*domains, "average"]:
            norm.add_column(d, justify="right")
        for name, ratio in result["normalized"].items():
            norm.add_row(name, *("-" if ratio.get(d) is None else f"{ratio[d]:.2f}" for d in [*domains, "average"]))
        Console().print(norm)


def _how_sampled(run: Run, name: str) -> tuple[str, dict, str | None]:
    """How model `name` is run: a source as it is sampled (its backend, engine, template), the rest with `sampler`."""
    r = run.recipe
    src = next((s for s in r.sources if s.name == name), None)
    if src is None:
        return r.sampler.backend, dict(r.sampler.engine), None
    backend, engine = r.sampler_for(src)
    return backend, engine, r.chat_template(src)


def _settings(run: Run, part: str | None) -> dict:
    return {
        "eval": as_dict(run.recipe.eval),
        "model": run.model_key(part),
        "sampler": _how_sampled(run, part),
        "checks": run.recipe.checks,
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", dest="only", nargs="+", help="evaluate only these models (e.g. target_before qwen2-code)"
    )


EVAL = StageDef(
    name="eval",
    help="held-out accuracy of every model of the run -> eval/scoreboard.json",
    run=run_eval,
    settings=_settings,
    parts=model_names,  # one part per model: eval/<model>
    outputs={"results": "results.parquet", "scoreboard": "scoreboard.json"},
    enabled=lambda recipe: recipe.eval is not None,
    disabled_reason="the recipe has no `eval:` section",
    arguments=_arguments,
)
