"""The `eval` stage: held-out accuracy per domain of every model of a run, with the same
verifiers that scoring uses, written as `runs/<name>/scoreboard.json`:

    {"models": {"<model>": {"<domain>": accuracy, ..., "average": mean over domains}, ...},
     "n": {"<domain>": prompts}}

Models: `target_before` (the untrained target), `target_sft`, `target_dpo`, one
`target_single_<source>` per control, and each source by its own name. Each model is
sampled greedily with its own chat template; each is its own resumable stage
(`eval/<model>`).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

from fusechat3.building.stage import control_sources
from fusechat3.recipe import resolve_model
from fusechat3.run import Run, log
from fusechat3.scoring.verify import verify_many


def eval_models(run: Run) -> dict[str, str]:
    """Model name -> path or Hub id, for every model of the run that exists (or will)."""
    root = run.dir.root
    models = {"target_before": resolve_model(run.recipe.target.model)}
    models["target_sft"] = str(root / "sft" / "model")
    models["target_dpo"] = str(root / "dpo" / "model")
    for name in control_sources(run):
        models[f"target_single_{name}"] = str(root / "controls" / name / "model")
    for src in run.recipe.fusion_sources:  # the target's own samples (role: target) are target_before
        models[src.name] = resolve_model(src.model)
    return models


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

    from fusechat3.sampling import GenParams, get_sampler

    recipe = run.recipe
    if recipe.eval is None:
        raise ValueError(f"{recipe.path}: this recipe has no `eval:` section")
    prompts = eval_prompt_rows(run)
    sp = recipe.eval.sampling
    params = GenParams(
        n=1,
        temperature=sp.temperature,
        top_p=sp.top_p,
        top_k=sp.top_k,
        repetition_penalty=sp.repetition_penalty,
        max_tokens=sp.max_tokens,
        seed=sp.seed,
        stop=list(sp.stop),
    )
    board: dict[str, dict[str, float]] = {}
    for name, path in eval_models(run).items():
        if only and name not in only:
            continue
        made_by_run = name.startswith("target_") and name != "target_before"
        if made_by_run and not (Path(path) / "config.json").is_file():
            log(f"eval: {name} skipped: no model at {path} (run its stage first)")
            continue
        stage = run.stage(f"eval/{name}")
        if not stage.done():
            t0 = time.time()
            log(f"eval: {name} on {len(prompts)} held-out prompts")
            # A source is evaluated the way it is sampled (its own backend, engine, template).
            src = next((s for s in recipe.sources if s.name == name), None)
            backend, engine = recipe.sampler_for(src) if src else (recipe.sampler.backend, recipe.sampler.engine)
            template = recipe.chat_template(src) if src else None
            sampler = get_sampler(backend, path, chat_template=template, **engine)
            try:
                outs = sampler.generate([p["messages"] for p in prompts], params)
            finally:
                sampler.close()
            texts = [o[0].text if o[0].finish_reason == "stop" else "" for o in outs]
            checks = verify_many(
                prompts,
                texts,
                timeout_s=recipe.scoring.code.timeout_s,
                memory_mb=recipe.scoring.code.memory_mb,
                workers=recipe.scoring.code.workers,
            )
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
    out = run.dir.root / "scoreboard.json"
    out.write_text(json.dumps(result, indent=1))
    print_scoreboard(result)
    log(f"scoreboard written to {out}")
    return result


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
