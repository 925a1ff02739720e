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

from fusechat3.errors import RecipeError
from fusechat3.evaluation import table
from fusechat3.evaluation.winrate import judge, win_rate_of
from fusechat3.recipe import as_dict
from fusechat3.run import Run, log, model_names
from fusechat3.sampling.params import GenParams
from fusechat3.schema import prompt_meta
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

    from fusechat3.sampling import get_sampler

    recipe = run.recipe
    require_enabled(run, EVAL)
    prompts = eval_prompt_rows(run)
    board: dict[str, dict[str, float]] = {}
    win_rates: dict[str, dict[str, dict]] = {}
    if any("baseline" in prompt_meta(p) for p in prompts) and recipe.eval_judge is None:
        raise RecipeError(
            f"{recipe.path}: eval.prompts have baseline answers (a win-rate benchmark) but there is no judge; "
            "set eval.judge (a reward model, e.g. {model: RLHFlow/ArmoRM-Llama3-8B-v0.1}) or eval.llm_judge "
            "(an LLM on an OpenAI-compatible server, e.g. {model: judge, base_url: http://localhost:8000/v1})"
        )
    for name, path in run.models().items():
        if only and name not in only:
            continue
        if not_made_yet(name, path):
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
                outs = _generate(sampler, recipe.eval, prompts)
            finally:
                sampler.close()
            texts = [o[0].text if o[0].finish_reason == "stop" else "" for o in outs]
            checks = verify_many(prompts, texts, **recipe.checks, batch_size=recipe.sandbox_batch_size)
            rows = [
                {
                    "prompt_id": p["prompt_id"],
                    "domain": p["domain"],
                    "benchmark": benchmark_of(p),
                    "model": name,
                    "text": o[0].text,
                    "finish_reason": o[0].finish_reason,
                    "correct": bool(c),
                    "verdict": v if o[0].finish_reason == "stop" else o[0].finish_reason,
                }
                for p, o, (c, v) in zip(prompts, outs, checks, strict=True)
            ]
            _judge_rows(recipe, prompts, texts, rows)
            stage.write_shard("results", rows)
            scores, detail = _scores(rows, recipe.seed)
            stage.finish({"accuracy": scores, "win_rates": detail, "seconds": round(time.time() - t0, 1)})
        summary = stage.summary()
        board[name] = summary["accuracy"]
        if summary.get("win_rates"):
            win_rates[name] = summary["win_rates"]
    n = defaultdict(int)
    for p in prompts:
        n[benchmark_of(p)] += 1
    result = {"models": board, "n": dict(n)}
    if win_rates:
        result["win_rates"] = win_rates
        result["judge"] = judge_name(recipe.eval_judge)
    normalized = normalized_performance(run.recipe, board)
    if normalized:
        result["normalized"] = normalized
    out = run.output(EVAL.name, "scoreboard")
    out.write_text(json.dumps(result, indent=1))
    table.write_table(run, result)  # scoreboard.md / .png, with lm-eval's columns when `fusechat3 lm-eval` wrote some
    print_scoreboard(result)
    log(f"scoreboard written to {out} (table: {out.with_suffix('.md').name}, plot: {out.with_suffix('.png').name})")
    return result


def _generate(sampler, spec, prompts: list[dict]) -> list:
    """One response per prompt, each benchmark sampled with its own settings (`EvalSpec.params_for`); prompts whose
    settings are the same go to the sampler in one call (a toy run: all of them)."""
    groups: dict[str, tuple[GenParams, list[int]]] = {}
    for i, p in enumerate(prompts):
        params = spec.params_for(benchmark_of(p)).with_n(1)
        groups.setdefault(params.model_dump_json(), (params, []))[1].append(i)
    outs: list = [None] * len(prompts)
    for params, idx in groups.values():
        for i, out in zip(idx, sampler.generate([prompts[i]["messages"] for i in idx], params), strict=True):
            outs[i] = out
    return outs


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


def not_made_yet(name: str, path: str) -> bool:
    """Whether model `name` is one the run's stages make (target_*, not target_before) and its folder is not there."""
    from pathlib import Path

    return name.startswith("target_") and name != "target_before" and not (Path(path) / "config.json").is_file()


def benchmark_of(prompt: dict) -> str:
    """The scoreboard column of a prompt: its builder's `meta["benchmark"]` (gsm8k, alpaca_eval, ...), else its
    domain (the toy world's tasks)."""
    return str(prompt_meta(prompt).get("benchmark") or prompt["domain"])


def judge_name(spec) -> str:
    """The judge in words, for the scoreboard: "reward model <model>" or "LLM <model> at <base_url>"."""
    from fusechat3.evaluation.llm_judge import LLMJudgeSpec

    if isinstance(spec, LLMJudgeSpec):
        return f"LLM {spec.model} at {spec.base_url}"
    return f"reward model {spec.model}"


def _judge_rows(recipe, prompts: list[dict], texts: list[str], rows: list[dict]) -> None:
    """Add the judge's verdict to the rows of prompts with a baseline answer (`outcome`, and the reward model's
    `reward` and `baseline_reward` or the LLM judge's `verdicts`)."""
    judged = [i for i, p in enumerate(prompts) if "baseline" in prompt_meta(p)]
    if not judged:
        return
    verdicts = judge(recipe.eval_judge, [prompts[i] for i in judged], [texts[i] for i in judged])
    for i, found in zip(judged, verdicts, strict=True):
        rows[i].update(found)
        rows[i]["baseline_length"] = len(prompt_meta(prompts[i])["baseline"])
        rows[i]["correct"] = found["outcome"] is not None and found["outcome"] > 0.5


def _scores(rows: list[dict], seed: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Per benchmark, in [0, 1]: the accuracy, or for a judged benchmark the win rate (ties one half); and the
    judged benchmarks' win-rate figures (`winrate.win_rate`, with `unjudged`: prompts the judge gave no reward)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["benchmark"]].append(r)
    scores: dict[str, float] = {}
    detail: dict[str, dict] = {}
    for bench, group in sorted(by.items()):
        if "outcome" not in group[0]:
            if all(r["verdict"] == "unchecked" for r in group):
                continue  # no check and no baseline (e.g. arena_hard without its baseline file): no score
            scores[bench] = round(sum(r["correct"] for r in group) / len(group), 4)
            continue
        ok = [r for r in group if r["outcome"] is not None]
        if not ok:
            detail[bench] = {"n": 0, "unjudged": len(group)}
            continue
        figures = win_rate_of(
            [r["outcome"] for r in ok],
            [len(r["text"]) for r in ok],
            [r["baseline_length"] for r in ok],
            seed=seed,
        )
        detail[bench] = {**figures, "unjudged": len(group) - len(ok)}
        scores[bench] = round(figures["win_rate"] / 100, 4)
    scores["average"] = round(sum(scores.values()) / len(scores), 4) if scores else 0.0
    return scores, detail


def print_scoreboard(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    models = result["models"]
    domains = sorted({d for acc in models.values() for d in acc if d != "average"})
    title = "scoreboard: held-out accuracy (%)" + (
        ", win rate (%) against the baseline" if result.get("win_rates") else ""
    )
    table = Table(title=title, title_justify="left")
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
    if result.get("win_rates"):
        title = (
            f"win rates against the baseline answers, judged by {result.get('judge', 'the judge')}, ties one half (%)"
        )
        wins = Table(title=title, title_justify="left")
        for column in ("model", "benchmark", "win rate", "95% CI", "length-controlled", "W/T/L", "unjudged"):
            wins.add_column(column, justify="left" if column in ("model", "benchmark") else "right")
        for name, per in result["win_rates"].items():
            for bench, f in per.items():
                if not f.get("n"):
                    wins.add_row(name, bench, "-", "-", "-", "-", str(f.get("unjudged", 0)))
                    continue
                wins.add_row(
                    name,
                    bench,
                    f"{f['win_rate']:.1f}",
                    f"{f['ci_low']:.1f}-{f['ci_high']:.1f}",
                    f"{f['lc_win_rate']:.1f}",
                    f"{f['wins']}/{f['ties']}/{f['losses']}",
                    str(f["unjudged"]),
                )
        Console().print(wins)


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
    help="every model of the run on the eval benchmarks (accuracy, or win rate) -> eval/scoreboard.{json,md,png}",
    run=run_eval,
    settings=_settings,
    parts=model_names,  # one part per model: eval/<model>
    outputs={
        "results": "results.parquet",
        "scoreboard": "scoreboard.json",
        "table": "scoreboard.md",
        "plot": "scoreboard.png",
        "lm_eval": "lm_eval.json",  # written by `fusechat3 lm-eval` (fusechat3.evaluation.lm_eval_bridge)
    },
    enabled=lambda recipe: recipe.eval is not None,
    disabled_reason="the recipe has no `eval:` section",
    arguments=_arguments,
)
