"""The `represent` stage: each model's top-k next-token log-probabilities at every position of every
corpus conversation, and its cross-entropy on the assistant turns (`explicit.represent`), one part per
model: `represent/<source>` for each fused source, and `represent/target` (the target's own
distribution, the pivot of pairwise fusion) when `explicit.pairwise` is on.

Sharded and resumable like `sample`: shard k holds conversations [k*shard_size, (k+1)*shard_size) of
the corpus, written atomically and recorded in the manifest, so a killed run loses one shard at most
and a resumed one gives the same rows. `--model NAME` does one part; `--shard i/n` takes the shards k
with k % n == i (n jobs sharing one run directory). Conversations the model's chat template cannot
render verbatim, or longer than `represent.max_length` tokens, are skipped, and counted by reason in
the shard records and the summary.
"""

from __future__ import annotations

import time
from typing import Any

from fusechat3.explicit.spec import TARGET_PART
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


def run_represent(run: Run, model: str | None = None, shard: tuple[int, int] | None = None) -> None:
    """Represent every part (or the one named `model`), every shard (or those with index % n == i)."""
    require_enabled(run, REPRESENT)
    parts = represent_parts(run.recipe)
    if model is not None and model not in parts:
        from fusechat3.config import did_you_mean
        from fusechat3.errors import UserError

        raise UserError(f"represent: no model named {model!r} in this recipe{did_you_mean(model, parts)}")
    corpus = run.read("corpus")
    for part in [model] if model else parts:
        _represent_part(run, part, corpus, shard)


def _represent_part(run: Run, part: str, corpus: list[dict], shard: tuple[int, int] | None) -> None:
    from fusechat3.explicit.represent import to_row

    spec, k = run.recipe.explicit.represent, run.recipe.explicit.top_k
    name = f"{REPRESENT.name}/{part}"
    stage = run.stage(name)
    if stage.done():
        log(f"{name}: done already")
        return
    ranges = shard_ranges(len(corpus), spec.shard_size)
    todo = [
        (i, lo, hi)
        for i, (lo, hi) in enumerate(ranges)
        if (shard is None or i % shard[1] == shard[0]) and not stage.has_shard(shard_name(i))
    ]
    if todo:
        ref, template = model_of(run.recipe, part)
        log(f"{name}: {len(todo)} of {len(ranges)} shards to do, {spec.backend}")
        plain = run.recipe.explicit.render == "plain"
        backend = _Backend(spec, resolve_model(ref), template, engine_of(run.recipe, part), plain)
        try:
            for i, lo, hi in todo:
                t0 = time.time()
                rows, skipped = _usable(backend.tok, corpus[lo:hi], spec.max_length, plain)
                reps = backend([r["messages"] for r in rows], k) if rows else []
                out = [to_row(r["prompt_id"], rep) for r, rep in zip(rows, reps, strict=True)]
                info = {
                    "tokens": sum(o["length"] for o in out),
                    "seconds": round(time.time() - t0, 3),
                    "skipped": skipped,
                }
                stage.write_shard(shard_name(i), out, info)
        finally:
            backend.close()
    if all(stage.has_shard(shard_name(i)) for i in range(len(ranges))):
        summary = _summary(stage.shard_infos(), len(corpus))
        stage.finish(summary)
        lines = [(key, summary[key]) for key in ("conversations", "represented", "tokens", "tokens_per_s")]
        print_summary(
            name, [*lines, *((f"skipped: {w}", n) for w, n in sorted(summary["skipped"].items()))], summary["seconds"]
        )
    else:
        log(f"{name}: this process's shards are written; others are still missing")


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
