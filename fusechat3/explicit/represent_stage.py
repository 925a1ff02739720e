"""The `represent` stage: each model's top-k next-token log-probabilities at every position of every
corpus conversation, and its cross-entropy on the assistant turns (`explicit.represent`), one part per
model: `represent/<source>` for each fused source, and `represent/target` (the target's own
distribution, the pivot of pairwise fusion) when `explicit.pairwise` is on.

Sharded and resumable like `sample`: shard k holds conversations [k*shard_size, (k+1)*shard_size) of
the corpus, written atomically and recorded in the manifest, so a killed run loses one shard at most
and a resumed one gives the same rows. `--model NAME` does one part; `--shard i/n` takes the shards k
with k % n == i (n jobs sharing one run directory). Conversations the model's chat template cannot
render verbatim, or longer than `represent.max_length` tokens, are skipped, and counted by reason in
the shard records and the summary. `--ray [ADDRESS]` (or `explicit.represent.ray`, with a source's own
`ray:` over it) spreads the shards over a Ray cluster's actors, one model load each
(`fusechat3.ray_exec`); the shards and rows are the same.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from fusechat3.explicit.spec import TARGET_PART
from fusechat3.ray_exec import RaySpec, add_ray_argument, with_address
from fusechat3.recipe import as_dict, resolve_model
from fusechat3.run import Run, log, print_summary
from fusechat3.shards import shard_arg, shard_name, shard_ranges, totals
from fusechat3.stages import EXPLICIT_OFF, StageDef, explicit, require_enabled


def represent_parts(recipe) -> list[str]:
    """The models represented: every fused source, and the target itself when fusion is pairwise."""
    if recipe.explicit is None:
        return []
    return [*recipe.explicit_sources, *([TARGET_PART] if recipe.explicit.pairwise else [])]


def model_of(recipe, part: str) -> tuple[str, str | None]:
    """(model reference, chat template text or None) of a represent part."""
    if part == TARGET_PART:
        return recipe.target.model, None
    src = recipe.source(part)
    return src.model, recipe.chat_template(src)


def engine_of(recipe, part: str) -> dict:
    """The vLLM engine options of a represent part: `explicit.represent.engine`, under the source's own
    `engine:` (its tensor_parallel_size, max_model_len...), as it is sampled."""
    own = {} if part == TARGET_PART else recipe.source(part).engine
    return {**recipe.explicit.represent.engine, **own}


def ray_of(recipe, part: str, address: str | None) -> RaySpec | None:
    """Where a represent part runs on Ray: the source's own `ray:` (as it is sampled: its GPUs per replica), else
    `explicit.represent.ray`; `address` is the CLI's `--ray`. None: here."""
    own = None if part == TARGET_PART else recipe.source(part).ray
    return with_address(own or recipe.explicit.represent.ray, address)


class _Backend:
    """One model's representations, by the recipe's backend (hf: transformers forward; vllm: prompt_logprobs)."""

    def __init__(self, spec, path: str, template: str | None, engine: dict, plain: bool) -> None:
        from transformers import AutoTokenizer

        self.spec, self.plain = spec, plain
        self.tok = AutoTokenizer.from_pretrained(path)
        if template is not None:
            self.tok.chat_template = template
        if spec.backend == "vllm":
            from fusechat3.explicit.represent_vllm import open_engine

            self.llm = open_engine(path, **engine)
        else:
            import torch
            from transformers import AutoModelForCausalLM

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, spec.dtype)).to(device).eval()

    def __call__(self, conversations: list[list[dict]], k: int) -> list[dict]:
        if self.spec.backend == "vllm":
            from fusechat3.explicit.represent_vllm import represent_vllm

            return represent_vllm(self.llm, self.tok, conversations, k=k, plain=self.plain)
        from fusechat3.explicit.represent import represent

        return represent(self.model, self.tok, conversations, k=k, batch_size=self.spec.batch_size, plain=self.plain)

    def close(self) -> None:
        if self.spec.backend == "vllm":
            from fusechat3.vllm_engine import close_llm

            close_llm(self)


def _usable(tok, rows: list[dict], max_length: int, plain: bool) -> tuple[list[dict], dict[str, str]]:
    """The rows this model can represent, and {prompt_id: why not} for the others."""
    from fusechat3.explicit.represent import encode

    ok, skipped = [], {}
    for row in rows:
        try:
            n = len(encode(tok, row["messages"], plain)["ids"])
        except ValueError:
            skipped[row["prompt_id"]] = "template_rewrites_content"
            continue
        if n > max_length:
            skipped[row["prompt_id"]] = "too_long"
            continue
        ok.append(row)
    return ok, skipped


def run_represent(
    run: Run, model: str | None = None, shard: tuple[int, int] | None = None, ray: str | None = None
) -> None:
    """Represent every part (or the one named `model`), every shard (or those with index % n == i); with `ray` (an
    address, or "local"), on a Ray cluster whatever the recipe says."""
    require_enabled(run, REPRESENT)
    parts = represent_parts(run.recipe)
    if model is not None and model not in parts:
        from fusechat3.config import did_you_mean
        from fusechat3.errors import UserError

        raise UserError(f"represent: no model named {model!r} in this recipe{did_you_mean(model, parts)}")
    corpus = run.read("corpus")
    for part in [model] if model else parts:
        _represent_part(run, part, corpus, shard, ray)


def _represent_part(
    run: Run, part: str, corpus: list[dict], shard: tuple[int, int] | None, ray_address: str | None
) -> None:
    from fusechat3.logs import progress

    spec = run.recipe.explicit.represent
    name = f"{REPRESENT.name}/{part}"
    stage = run.stage(name)
    if stage.done():
        log(f"{name}: done already")
        return
    ranges = shard_ranges(len(corpus), spec.shard_size)
    todo = [
        (i, corpus[lo:hi])
        for i, (lo, hi) in enumerate(ranges)
        if (shard is None or i % shard[1] == shard[0]) and not stage.has_shard(shard_name(i))
    ]
    if todo:
        ref, template = model_of(run.recipe, part)
        ray = ray_of(run.recipe, part, ray_address)
        where = f"on Ray ({ray.replicas} replica(s))" if ray else "here"
        log(f"{name}: {len(todo)} of {len(ranges)} shards to do, {spec.backend}, {where}")
        args = (spec, resolve_model(ref), template, engine_of(run.recipe, part), run.recipe.explicit.render == "plain")
        k = run.recipe.explicit.top_k
        bar = progress(sum(len(rows) for _, rows in todo), name, "conversation")
        done = None
        try:
            if ray is not None:
                from fusechat3.ray_exec import run_shards

                done = run_shards(ray, functools.partial(_open_backend, args, k), todo, len, bar.update)
            else:
                done = _represent_here(args, k, todo, bar.update)
            for i, (out, skipped), seconds in done:  # as each shard finishes
                info = {"tokens": sum(o["length"] for o in out), "seconds": round(seconds, 3), "skipped": skipped}
                stage.write_shard(shard_name(i), out, info)
        finally:
            if done is not None:
                done.close()  # the model (or the Ray actors) released now, not when collected
            bar.close()
    if all(stage.has_shard(shard_name(i)) for i in range(len(ranges))):
        summary = _summary(stage.shard_infos(), len(corpus))
        stage.finish(summary)
        lines = [(key, summary[key]) for key in ("conversations", "represented", "tokens", "tokens_per_s")]
        print_summary(
            name, [*lines, *((f"skipped: {w}", n) for w, n in sorted(summary["skipped"].items()))], summary["seconds"]
        )
    else:
        log(f"{name}: this process's shards are written; others are still missing")


def _represent_here(
    args: tuple, k: int, shards: list[tuple[int, list[dict]]], progress: Callable[[int], None]
) -> Iterator[tuple[int, tuple[list[dict], dict[str, str]], float]]:
    """(shard index, (rows, skipped), seconds) for each shard, represented in this process."""
    backend = _Backend(*args)
    try:
        for i, rows in shards:
            t0 = time.time()
            result = _represent_shard(backend, k, rows)
            progress(len(rows))
            yield i, result, time.time() - t0
    finally:
        backend.close()


def _open_backend(args: tuple, k: int) -> Callable[[list[dict]], tuple[list[dict], dict[str, str]]]:
    """A Ray actor's setup (`fusechat3.ray_exec`): load the model once; the function that represents one shard."""
    backend = _Backend(*args)
    return lambda rows: _represent_shard(backend, k, rows)


def _represent_shard(backend: _Backend, k: int, corpus_rows: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """One shard's rows (`represent.to_row`), and {prompt_id: why} for the conversations skipped."""
    from fusechat3.explicit.represent import to_row

    rows, skipped = _usable(backend.tok, corpus_rows, backend.spec.max_length, backend.plain)
    reps = backend([r["messages"] for r in rows], k) if rows else []
    return [to_row(r["prompt_id"], rep) for r, rep in zip(rows, reps, strict=True)], skipped


def _summary(infos: dict[str, dict], n: int) -> dict[str, Any]:
    t = totals(infos)
    return {"conversations": n, "represented": t.pop("rows"), **t}


def _settings(run: Run, part: str | None) -> dict:
    spec = run.recipe.explicit
    ref, template = model_of(run.recipe, part)
    return {
        "model": ref,
        "template": template,
        "top_k": spec.top_k,
        "render": spec.render,
        "represent": as_dict(spec.represent),
        "engine": engine_of(run.recipe, part),
    }


def _arguments(parser) -> None:
    parser.add_argument("--model", help="represent only this model (a source's name, or 'target')")
    parser.add_argument(
        "--shard", type=shard_arg, metavar="I/N", help="do only shards k with k %% N == I (split one model over N jobs)"
    )
    add_ray_argument(parser, "explicit.represent.ray / sources[i].ray")


REPRESENT = StageDef(
    name="represent",
    help="each model's top-k next-token log-probs and cross-entropy on the corpus (explicit fusion)",
    run=run_represent,
    reads=("corpus",),
    settings=_settings,
    parts=represent_parts,
    outputs={"rows": "shard-*.parquet"},
    enabled=explicit,
    disabled_reason=EXPLICIT_OFF,
    arguments=_arguments,
)
