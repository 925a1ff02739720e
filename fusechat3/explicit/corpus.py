"""The `corpus` stage: the training texts of explicit fusion, as conversations that end with an
assistant turn (`runs/<name>/corpus/corpus.parquet`: prompt_id, domain, messages).

`explicit.corpus` says where they come from:

- `prompts`: each prompt row of the `prompts` stage with its reference response, `meta["response"]`
  (a data builder writes it: the toy world's `with_response: true`). Rows without one are skipped
  and counted (`no_response`), never dropped silently.
  With `explicit.render: plain` (a text corpus, FuseLLM), a prompt without a response is a training
  text as it is: its own contents.
- `sft`: the implicit path's built SFT set (`build/sft.parquet`): the best source responses, the
  same kind of data as FuseChat-1.0/2.0's training mixture.
"""

from __future__ import annotations

import time
from collections import Counter

from fusechat3.run import Run, log, print_summary
from fusechat3.schema import assistant, prompt_meta
from fusechat3.stages import EXPLICIT_OFF, StageDef, explicit, require_enabled


def corpus_rows(run: Run) -> tuple[list[dict], Counter]:
    """The corpus's conversations and the skipped rows by reason."""
    skipped: Counter = Counter()
    rows = []
    if run.recipe.explicit.corpus == "sft":
        return _sft_rows(run), skipped
    plain = run.recipe.explicit.render == "plain"
    for row in run.read("prompts"):
        response = prompt_meta(row).get("response")
        if plain and response is None:  # plain text: the prompt's own text is the training text
            rows.append({"prompt_id": row["prompt_id"], "domain": row["domain"], "messages": row["messages"]})
            continue
        if not isinstance(response, str) or not response.strip():
            skipped["no_response"] += 1
            continue
        rows.append(
            {
                "prompt_id": row["prompt_id"],
                "domain": row["domain"],
                "messages": [*row["messages"], assistant(response)],
            }
        )
    return rows, skipped


def _sft_rows(run: Run) -> list[dict]:
    import pyarrow.parquet as pq

    path = run.existing("build", "sft")
    return pq.read_table(path, columns=["prompt_id", "domain", "messages"]).to_pylist()


def run_corpus(run: Run) -> None:
    require_enabled(run, CORPUS)
    stage = run.stage(CORPUS.name)
    if stage.done():
        log("corpus: done already")
        return
    t0 = time.time()
    rows, skipped = corpus_rows(run)
    if not rows:
        where = "the build's SFT set" if run.recipe.explicit.corpus == "sft" else "the prompts' meta['response']"
        raise _empty(run, where)
    stage.write_shard("corpus", rows)
    by_domain = Counter(r["domain"] for r in rows)
    summary = {"conversations": len(rows), "domains": dict(by_domain), "skipped": dict(skipped)}
    stage.finish({**summary, "seconds": round(time.time() - t0, 1)})
    lines = [("conversations", len(rows)), *((f"  {d}", n) for d, n in sorted(by_domain.items()))]
    print_summary("corpus", [*lines, *((f"skipped: {why}", n) for why, n in sorted(skipped.items()))], time.time() - t0)


def _empty(run: Run, where: str) -> Exception:
    from fusechat3.errors import UserError

    return UserError(
        f"{run.recipe.path or 'recipe'}: explicit.corpus {run.recipe.explicit.corpus!r} gives no conversation: "
        f"{where} is empty (give the prompt builders reference responses, or use corpus: sft)"
    )


CORPUS = StageDef(
    name="corpus",
    help="the training texts of explicit fusion: prompts with their reference responses, or the SFT set",
    run=run_corpus,
    reads=("prompts",),
    settings=lambda run, part: {
        "corpus": run.recipe.explicit.corpus,
        "plain": run.recipe.explicit.render == "plain",
        "build": _build_key(run),
    },
    outputs={"rows": "corpus.parquet"},
    enabled=explicit,
    disabled_reason=EXPLICIT_OFF,
)


def _build_key(run: Run) -> str | None:
    """The build stage's key when the corpus is its SFT set (so a new build makes a new corpus)."""
    return run.key("build") if run.recipe.explicit.corpus == "sft" else None
