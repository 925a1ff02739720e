"""The `sample` stage: sample N responses per prompt from each source, shard by shard, so
that a killed run loses one shard at most.

`sample` writes `runs/<name>/sample/<source>/shard-NNNNN.parquet`: shard k holds the
samples of prompts [k*shard_size, (k+1)*shard_size) of that source's prompts. The stage
key covers the prompts, the source's sampling key and the shard size, so a shard file
is only ever reused for exactly the same work. Each prompt is sampled with its own seed
(from the source's `sampling.seed` and its prompt_id; the recipe's `seed` does not enter):
a resumed or re-split run samples the same
responses as an uninterrupted one.

`--source NAME` samples one source; `--shard i/n` takes the shards k with k % n == i,
so n independent workers (a SLURM array, a Kubernetes indexed job) share one run
directory; whichever writes the last shard finishes the stage. Prompts skipped by the
backend (too long for the context, refused by a server) get no Sample rows: they are
recorded with their prompt_id and reason in the shard's record and in the summary.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from fusechat3.errors import RowError
from fusechat3.ray_exec import add_ray_argument, with_address
from fusechat3.recipe import SourceSpec, resolve_model
from fusechat3.run import Run, log, print_summary
from fusechat3.schema import check_prompt, make_sample
from fusechat3.shards import shard_arg, shard_name, shard_ranges, totals
from fusechat3.stages import IMPLICIT_OFF, StageDef, implicit

if TYPE_CHECKING:
    from fusechat3.sampling.base import Sampler


def run_sample(
    run: Run, source: str | None = None, shard: tuple[int, int] | None = None, ray: str | None = None
) -> None:
    """Sample every source (or one), every shard (or those with index % n == i); with `ray` (an address, or
    "local"), on a Ray cluster (`fusechat3.ray_exec`) whatever the recipe's `sampler.ray` says."""
    recipe = run.recipe
    specs = [recipe.source(source)] if source else list(recipe.sources)  # an unknown name: one line
    prompts = run.read("prompts")
    for spec in specs:
        _sample_source(run, spec, prompts, shard, ray)
    write_summary(run)


def _check_prompts(run: Run, rows: list[dict]) -> None:
    """A broken prompts stage (hand-edited, from another version) is one line, before any model loads."""
    where = str(run.output("prompts", "rows"))
    for i, row in enumerate(rows):
        try:
            check_prompt(row, where=f"{where}: row {i}, prompt")
        except RowError as e:
            raise RowError(f"{e} (fix the prompt builder's input, then re-run `fusechat3 prompts`)") from None


def _sample_source(
    run: Run, spec: SourceSpec, prompts: list[dict], shard: tuple[int, int] | None, ray_address: str | None
) -> None:
    from fusechat3.logs import progress
    from fusechat3.sampling.base import sampling_key

    recipe = run.recipe
    name = spec.name
    stage = run.stage(f"{SAMPLE.name}/{name}")
    if stage.done():
        log(f"sample/{name}: done already")
        return
    wanted = [p for p in prompts if spec.domains is None or p["domain"] in spec.domains]
    ranges = shard_ranges(len(wanted), recipe.sampler.shard_size)
    todo = [
        (k, lo, hi)
        for k, (lo, hi) in enumerate(ranges)
        if (shard is None or k % shard[1] == shard[0]) and not stage.has_shard(shard_name(k))
    ]
    if todo:
        _check_prompts(run, [p for _, lo, hi in todo for p in wanted[lo:hi]])
        key = sampling_key(recipe, spec)
        backend, engine = recipe.sampler_for(spec)
        total = sum(hi - lo for _, lo, hi in todo)
        ray = with_address(spec.ray or recipe.sampler.ray, ray_address)
        where = f"Ray ({ray.replicas} replica(s))" if ray else "here"
        log(
            f"sample/{name}: {len(todo)} of {len(ranges)} shards to do ({total} of {len(wanted)} prompts), "
            f"{backend}, {where}"
        )
        sampler_args = (backend, resolve_model(spec.model), recipe.chat_template(spec), engine)
        tokens = 0
        t0 = time.time()
        bar = progress(total, f"sample/{name}", "prompt")
        done = None
        try:
            shards = [(k, wanted[lo:hi]) for k, lo, hi in todo]
            sizes = {k: hi - lo for k, lo, hi in todo}
            if ray is not None:
                from fusechat3.ray_exec import run_shards

                setup = functools.partial(_open_sampler, sampler_args, spec, key)
                done = (
                    (k, rows, skipped, seconds)
                    for k, (rows, skipped), seconds in run_shards(ray, setup, shards, len, bar.update)
                )
            else:
                done = _sample_here(sampler_args, spec, shards, key, bar.update)
            for k, rows, skipped, seconds in done:  # as each shard finishes
                shard_tokens = sum(r["num_tokens"] for r in rows)
                info = {"prompts": sizes[k], "tokens": shard_tokens, "seconds": round(seconds, 3), "skipped": skipped}
                stage.write_shard(shard_name(k), rows, info)
                tokens += shard_tokens
                bar.set_postfix_str(f"{tokens / max(time.time() - t0, 1e-9):.0f} tok/s", refresh=True)
        finally:
            if done is not None:
                done.close()  # the sampler (or the Ray actors) shut down now, not when collected
            bar.close()
    if all(stage.has_shard(shard_name(k)) for k in range(len(ranges))):
        summary = _source_summary(stage.shard_infos(), len(wanted))
        stage.finish(summary)
        print_summary(
            f"sample/{name}",
            [
                ("prompts", summary["prompts"]),
                ("samples", summary["samples"]),
                ("generated tokens", summary["tokens"]),
                ("tokens/s", summary["tokens_per_s"]),
                *((f"skipped: {why}", n) for why, n in sorted(summary["skipped"].items())),
            ],
            summary["seconds"],
        )
    else:
        log(f"sample/{name}: this process's shards are written; others are still missing")


def _sample_here(
    sampler_args: tuple[str, str, str | None, dict],
    spec: SourceSpec,
    shards: list[tuple[int, list[dict]]],
    key: str,
    progress: Callable[[int], None],
) -> Iterator[tuple[int, list[dict], dict[str, str], float]]:
    """(shard index, Sample rows, skipped prompts, seconds) for each shard, sampled in this process."""
    sampler = _make_sampler(sampler_args)
    try:
        for k, chunk in shards:
            t0 = time.time()
            rows, skipped = _sample_shard(sampler, spec, chunk, key, progress)
            yield k, rows, skipped, time.time() - t0
    finally:
        sampler.close()


def _make_sampler(sampler_args: tuple[str, str, str | None, dict]) -> Sampler:
    """The sampler of (backend, model, chat template, engine options)."""
    from fusechat3.sampling import get_sampler

    backend, model, chat_template, engine = sampler_args
    return get_sampler(backend, model, chat_template=chat_template, **engine)


def _open_sampler(
    sampler_args: tuple[str, str, str | None, dict], spec: SourceSpec, key: str
) -> Callable[[list[dict]], tuple[list[dict], dict[str, str]]]:
    """A Ray actor's setup (`fusechat3.ray_exec`): open the sampler once; the function that samples one shard."""
    sampler = _make_sampler(sampler_args)
    return lambda chunk: _sample_shard(sampler, spec, chunk, key, lambda n: None)


def _sample_shard(
    sampler: Sampler, spec: SourceSpec, chunk: list[dict], key: str, progress: Callable[[int], None]
) -> tuple[list[dict], dict[str, str]]:
    """One shard's Sample rows, and {prompt_id: reason} for the prompts the backend skipped."""
    from fusechat3.sampling.base import derive_seed

    rows: list[dict] = []
    skipped: dict[str, str] = {}
    # One call per group of prompts that want the same n (n depends on the domain).
    for n in sorted({spec.sampling.n_for(p["domain"]) for p in chunk}):
        group = [p for p in chunk if spec.sampling.n_for(p["domain"]) == n]
        outs = sampler.generate(
            [p["messages"] for p in group],
            spec.sampling.with_n(n),
            seeds=[derive_seed(spec.sampling.seed, p["prompt_id"]) for p in group],
            progress=progress,
        )
        # strict: a backend returning fewer or more results than prompts is a bug, never a shift.
        for p, comps in zip(group, outs, strict=True):
            if len(comps) != n:
                raise RuntimeError(f"sampler returned {len(comps)} samples for prompt {p['prompt_id']}, wanted {n}")
            if all(c.finish_reason == "error" for c in comps):
                skipped[p["prompt_id"]] = comps[0].error or "error"
                continue
            for idx, c in enumerate(comps):
                rows.append(
                    make_sample(
                        prompt_id=p["prompt_id"],
                        model=spec.name,
                        sample_idx=idx,
                        text=c.text,
                        finish_reason=c.finish_reason,
                        num_tokens=c.num_tokens,
                        sampling_key=key,
                    )
                )
    rows.sort(key=lambda r: (r["prompt_id"], r["sample_idx"]))
    return rows, skipped


def _source_summary(infos: dict[str, dict], n_prompts: int) -> dict:
    """One source's figures, added up over every shard (whichever worker wrote it)."""
    t = totals(infos)
    return {"prompts": n_prompts, "samples": t.pop("rows"), **t}


def write_summary(run: Run) -> dict:
    """`runs/<name>/sample/summary.json`: every finished source's summary, one table.

    Written under the run's lock, from the manifests, so concurrent workers finishing
    different sources each leave a complete file."""
    from fusechat3.store import atomic_write

    out: dict[str, dict] = {}
    with run.dir._locked():
        for spec in run.recipe.sources:
            name = f"{SAMPLE.name}/{spec.name}"
            summary = run.dir.finished_summary(name, run.key(name))
            out[spec.name] = {"finished": False} if summary is None else summary
        path = run.output(SAMPLE.name, "summary")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(out, indent=2, sort_keys=True).encode()
        atomic_write(path, lambda f: f.write(text))
    return out


def _settings(run: Run, part: str | None) -> dict:
    from fusechat3.sampling.base import sampling_key

    src = run.recipe.source(part)
    return {
        "sampling_key": sampling_key(run.recipe, src),
        "domains": src.domains,
        "shard_size": run.recipe.sampler.shard_size,
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="sample only this source")
    parser.add_argument(
        "--shard",
        type=shard_arg,
        metavar="I/N",
        help="do only shards k with k %% N == I (split one source over N jobs)",
    )
    add_ray_argument(parser, "sampler.ray / sources[i].ray")


SAMPLE = StageDef(
    name="sample",
    help="sample N responses per prompt from each source (vLLM by default)",
    run=run_sample,
    reads=("prompts",),
    settings=_settings,
    parts=lambda recipe: [s.name for s in recipe.sources],
    outputs={"rows": "shard-*.parquet", "summary": "summary.json"},  # rows per part; summary of all
    arguments=_arguments,
    enabled=implicit,
    disabled_reason=IMPLICIT_OFF,
)
