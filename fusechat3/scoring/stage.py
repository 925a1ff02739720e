"""The `score` stage: every sampled response gets a reward-model score and, where the
domain has a check, a correctness verdict (math vs gold, code vs tests in the sandbox).

Works shard by shard over the samples (sorted by their key), so a killed run resumes at
the shard in flight. Truncated and empty responses are scored too, and keep the
sampling stage's `truncated` / `empty` flags: the building rules drop them, counted.
Rows: `fusechat3.schema.make_score`. The stage ends with a summary per source (reward
mean and quantiles, math and code pass rates, verdict counts), also written to
`runs/<name>/score/summary.json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

from fusechat3.ray_exec import add_ray_argument, with_address
from fusechat3.recipe import as_dict
from fusechat3.run import Run, log
from fusechat3.schema import assistant, make_score, sample_key
from fusechat3.scoring.verify import verify_many
from fusechat3.stages import IMPLICIT_OFF, StageDef, implicit
from fusechat3.store import atomic_write

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def run_score(run: Run, ray: str | None = None) -> None:
    """Score every sample, shard by shard; with `ray` (an address, or "local"), on a Ray cluster
    (`fusechat3.ray_exec`) whatever the recipe's `scoring.ray` says."""
    from fusechat3.logs import progress

    recipe = run.recipe
    stage = run.stage(SCORE.name)
    if stage.done():
        log("score: done already")
        return
    t0 = time.time()
    prompts = {p["prompt_id"]: p for p in run.read("prompts")}
    samples = sorted((s for part in run.parts("sample") for s in run.read(part)), key=sample_key)
    size = recipe.scoring.shard_size
    todo = [k for k in range(0, len(samples), size) if not stage.has_shard(f"shard-{k // size:05d}")]
    on_ray = with_address(recipe.scoring.ray, ray)
    if todo:
        where = f"on Ray ({on_ray.replicas} replica(s))" if on_ray else "here"
        log(f"score: {len(todo)} of {-(-len(samples) // size)} shards to do ({len(samples)} responses), {where}")
    bar = progress(sum(len(samples[k : k + size]) for k in todo), "score", "response", disable=not todo)
    done = None
    try:
        if todo and on_ray is not None:
            from fusechat3.ray_exec import run_shards, spare_cpus

            shards = [(k // size, _payload(samples[k : k + size], prompts)) for k in todo]
            # The code sandbox as Ray CPU tasks when the cluster has a CPU beside the actors (else they would wait
            # for one forever), else in each actor.
            tasks = spare_cpus(on_ray) >= 1
            log(f"score: code sandbox {'as Ray CPU tasks' if tasks else 'in each actor (no spare CPU on the cluster)'}")
            setup = functools.partial(_open_judges, recipe, tasks)
            done = run_shards(on_ray, setup, shards, lambda payload: len(payload["samples"]), bar.update)
        elif todo:
            done = _score_here(recipe, [(k // size, samples[k : k + size]) for k in todo], prompts, bar.update)
        for index, rows, _ in done or ():
            stage.write_shard(f"shard-{index:05d}", rows)
    finally:
        if done is not None:
            done.close()  # the reward model (or the Ray actors) released now, not when collected
        bar.close()
    rows = stage.read()
    secs = time.time() - t0
    summary = score_summary(rows, prompts)
    summary["all"]["seconds"] = round(secs, 1)
    stage.finish(summary)
    text = json.dumps(summary, indent=2, sort_keys=True).encode()
    atomic_write(run.output(SCORE.name, "summary"), lambda f: f.write(text))
    _print(summary, secs)


def _payload(chunk: list[dict], prompts: dict[str, dict]) -> dict:
    """What a Ray actor needs to score one shard: its samples and their prompts."""
    return {"samples": chunk, "prompts": {s["prompt_id"]: prompts[s["prompt_id"]] for s in chunk}}


def _open_judges(recipe, sandbox_tasks: bool) -> Callable[[dict], list[dict]]:
    """A Ray actor's setup (`fusechat3.ray_exec`): load the reward model once; the function that scores a shard
    (`sandbox_tasks`: its programs run as Ray CPU tasks)."""
    from fusechat3.ray_exec import cpu_tasks

    rm = recipe.scoring.reward_model.load()
    fan_out = cpu_tasks if sandbox_tasks else None
    return lambda payload: _score_chunk(recipe, rm, payload["samples"], payload["prompts"], fan_out)


def _score_here(
    recipe, shards: list[tuple[int, list[dict]]], prompts: dict[str, dict], progress: Callable[[int], None]
) -> Iterator[tuple[int, list[dict], float]]:
    """(shard index, Score rows, seconds) for each shard, scored in this process."""
    rm = recipe.scoring.reward_model.load()
    try:
        for index, chunk in shards:
            t0 = time.time()
            rows = _score_chunk(recipe, rm, chunk, prompts)
            progress(len(chunk))
            yield index, rows, time.time() - t0
    finally:
        rm.close()


def _score_chunk(
    recipe, rm, chunk: list[dict], prompts: dict[str, dict], fan_out: Callable | None = None
) -> list[dict]:
    chunk_prompts = [prompts[s["prompt_id"]] for s in chunk]
    # Identical responses to one prompt (common when N samples come from one model) are judged once: every
    # judge is a function of (prompt, response), so the copies get the first one's reward and verdict. The
    # samples are sorted by prompt_id, so a prompt's copies sit in one chunk.
    first: dict[tuple, int] = {}
    judged_as = [
        first.setdefault((s["prompt_id"], s["finish_reason"] == "error", s["text"]), i) for i, s in enumerate(chunk)
    ]
    unique = sorted(first.values())
    # Every response that exists is scored, truncated and empty ones included (flagged).
    live = [i for i in unique if chunk[i]["finish_reason"] != "error"]
    rewards: dict[int, tuple[float | None, str]] = {}
    if live:
        convs = [chunk_prompts[i]["messages"] + [assistant(chunk[i]["text"])] for i in live]
        rewards = dict(zip(live, rm.score(convs), strict=True))
    checks = dict(
        zip(
            unique,
            verify_many(
                [chunk_prompts[i] for i in unique],
                [chunk[i]["text"] for i in unique],
                **recipe.scoring.checks,
                batch_size=recipe.sandbox_batch_size,
                fan_out=fan_out,
            ),
            strict=True,
        )
    )
    rows = []
    for i, s in enumerate(chunk):
        reward, status = rewards.get(judged_as[i], (None, "error"))
        correct, verdict = checks[judged_as[i]]
        if s["finish_reason"] == "error":
            correct, verdict = None, "error"
        elif verdict == "unchecked" and reward is None:
            verdict = status  # no check, no reward: say why
        rows.append(
            make_score(
                prompt_id=s["prompt_id"],
                model=s["model"],
                sample_idx=s["sample_idx"],
                reward=reward,
                correct=correct,
                verdict=verdict,
                reward_status=status,
                truncated=s["finish_reason"] == "length",
                empty=not (s["text"] or "").strip(),
            )
        )
    return rows


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _figures(rows: list[dict], domains: list[str]) -> dict:
    rewards = sorted(r["reward"] for r in rows if r["reward"] is not None)
    out: dict = {
        "responses": len(rows),
        "reward_mean": round(sum(rewards) / len(rewards), 6) if rewards else None,
        "reward_quantiles": {f"p{int(q * 100)}": round(_quantile(rewards, q), 6) for q in QUANTILES} if rewards else {},
        "no_reward": dict(Counter(r["reward_status"] for r in rows if r["reward"] is None)),
        "truncated": sum(r["truncated"] for r in rows),
        "empty": sum(r["empty"] for r in rows),
        "verdicts": dict(Counter(r["verdict"] for r in rows).most_common()),
    }
    for domain in ("math", "code"):
        checked = [r for r, d in zip(rows, domains, strict=True) if d == domain]
        if checked:
            out[f"{domain}_pass_rate"] = round(sum(r["correct"] is True for r in checked) / len(checked), 4)
            out[f"{domain}_responses"] = len(checked)
    return out


def score_summary(rows: list[dict], prompts: dict[str, dict]) -> dict:
    """Figures per source (`model`) and for all rows together."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_source[r["model"]].append(r)
    summary = {
        name: _figures(rs, [prompts[r["prompt_id"]]["domain"] for r in rs]) for name, rs in sorted(by_source.items())
    }
    summary["all"] = _figures(rows, [prompts[r["prompt_id"]]["domain"] for r in rows])
    return summary


def _print(summary: dict, secs: float) -> None:
    from rich.console import Console
    from rich.table import Table

    names = [n for n in summary if n != "all"] + ["all"]
    table = Table(title=f"score  ({secs:.0f}s)", title_justify="left")
    table.add_column("what")
    for n in names:
        table.add_column(n, justify="right")

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [("responses", lambda f: f["responses"]), ("reward mean", lambda f: f["reward_mean"])]
    lines += [(f"reward {q}", lambda f, q=q: f["reward_quantiles"].get(q)) for q in ("p10", "p50", "p90")]
    lines += [
        ("math pass rate", lambda f: f.get("math_pass_rate")),
        ("code pass rate", lambda f: f.get("code_pass_rate")),
        ("flagged truncated", lambda f: f["truncated"]),
        ("flagged empty", lambda f: f["empty"]),
    ]
    verdicts = sorted({v for n in names for v in summary[n]["verdicts"]})
    lines += [(f"verdict: {v}", lambda f, v=v: f["verdicts"].get(v, 0)) for v in verdicts]
    reasons = sorted({v for n in names for v in summary[n]["no_reward"]})
    lines += [(f"no reward: {v}", lambda f, v=v: f["no_reward"].get(v, 0)) for v in reasons]
    for what, get in lines:
        table.add_row(what, *(cell(get(summary[n])) for n in names))
    Console().print(table)


def _check(run: Run) -> None:
    from fusechat3.scoring.reward import check_backend

    check_backend(run.recipe.scoring.reward_model.backend)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_ray_argument(parser, "scoring.ray")


SCORE = StageDef(
    name="score",
    help="score every response: reward model + math/code verification",
    run=run_score,
    reads=("prompts", "sample"),
    settings=lambda run, part: as_dict(run.recipe.scoring),
    outputs={"rows": "shard-*.parquet", "summary": "summary.json"},
    check=_check,
    arguments=_arguments,
    enabled=implicit,
    disabled_reason=IMPLICIT_OFF,
)
