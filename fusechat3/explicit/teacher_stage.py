"""The `teacher` stage: the fused next-token distribution at every target position of every corpus
conversation, ready for `fuse-train` (`runs/<name>/teacher/<part>/teacher.parquet`: input_ids, labels,
fused_ids, fused_probs, with prompt_id and domain).

Parts: `teacher/all`, every source fused into one teacher (FuseLLM); or, with `explicit.pairwise`,
`teacher/<source>` per source, the target (the pivot, its own distribution) fused with that source
(FuseChat-1.0/2.0). For each source it first counts the co-alignments of (source id, target id) over
the corpus (`explicit.vocab_texts` texts) and builds the vocabulary map (`vocab.vocab_map`: exact, then
statistics, then MinED); then `teacher.teacher` fuses each conversation by `explicit.method`.
A conversation a member has no representation of (skipped by `represent`) is skipped and counted.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from fusechat3.explicit.spec import TARGET_PART
from fusechat3.recipe import resolve_model
from fusechat3.run import Run, log, print_summary
from fusechat3.stages import EXPLICIT_OFF, StageDef, explicit, require_enabled

ALL = "all"  # the part of a teacher of every source (FuseLLM)


def teacher_parts(recipe) -> list[str]:
    if recipe.explicit is None:
        return []
    return list(recipe.explicit_sources) if recipe.explicit.pairwise else [ALL]


def members(recipe, part: str) -> list[str]:
    """The `represent` parts fused in teacher `part`."""
    return [TARGET_PART, part] if recipe.explicit.pairwise else list(recipe.explicit_sources)


def _tokenizer(run: Run, member: str):
    from transformers import AutoTokenizer

    from fusechat3.explicit.represent_stage import model_of

    ref, template = model_of(run.recipe, member)
    tok = AutoTokenizer.from_pretrained(resolve_model(ref))
    if template is not None:
        tok.chat_template = template
    return tok


def _groups(target: dict, rep: dict, texts) -> np.ndarray:
    """`teacher.turn_groups`'s groups, with the MinED fallback where a turn's offsets fail."""
    from fusechat3.explicit.teacher import turn_groups

    try:
        return turn_groups(target, rep)[0]
    except ValueError:
        return turn_groups(target, rep, *texts())[0]


def vocabulary(run: Run, corpus, targets: dict, tok, member: str, reps: dict) -> tuple[np.ndarray, dict]:
    """A member's vocabulary map into the target's, and how each of its ids was mapped."""
    from fusechat3.explicit.teacher import piece_texts
    from fusechat3.explicit.vocab import CoAlignment, vocab_map

    if member == TARGET_PART:
        return np.arange(len(tok), dtype=np.int64), {"identity": len(tok)}
    s_tok = _tokenizer(run, member)
    co = CoAlignment.empty(len(s_tok), len(tok))
    limit = run.recipe.explicit.vocab_texts
    counted = 0
    for row in corpus:
        if limit is not None and counted >= limit:
            break
        t, s = targets.get(row["prompt_id"]), reps.get(row["prompt_id"])
        if t is None or s is None:
            continue
        groups = _groups(t, s, lambda t=t, s=s: (piece_texts(tok, t), piece_texts(s_tok, s)))
        content = groups[t["mask"][groups[:, 0]]]  # the assistant contents only, not the template tokens
        co.add_alignment(s["ids"], t["ids"], content)
        counted += 1
    how: dict = {}
    vmap = vocab_map(s_tok, tok, co, counts=how)
    return vmap, {"texts_counted": counted, "pairs_counted": int(len(co.keys)), **how}


def run_teacher(run: Run) -> None:
    require_enabled(run, TEACHER)
    parts = [p for p in teacher_parts(run.recipe) if not run.stage(f"{TEACHER.name}/{p}").done()]
    if not parts:
        log("teacher: done already")
        return
    from fusechat3.explicit.represent import encode

    corpus = run.read("corpus")
    tok = _tokenizer(run, TARGET_PART)
    targets, bad = {}, Counter()
    for row in corpus:
        try:
            targets[row["prompt_id"]] = encode(tok, row["messages"], run.recipe.explicit.render == "plain")
        except ValueError:
            bad["target_template_rewrites_content"] += 1
    for part in parts:
        _teacher_part(run, part, corpus, targets, tok, bad)


def _teacher_part(run: Run, part: str, corpus: list[dict], targets: dict, tok, bad: Counter) -> None:
    from fusechat3.explicit.fuse import fusion_weights
    from fusechat3.explicit.represent import from_row
    from fusechat3.explicit.teacher import piece_texts, teacher

    t0 = time.time()
    spec = run.recipe.explicit
    name = f"{TEACHER.name}/{part}"
    stage = run.stage(name)
    names = members(run.recipe, part)
    reps = {m: {r["prompt_id"]: from_row(r) for r in run.read(f"represent/{m}")} for m in names}
    maps, mapping = [], {}
    for m in names:
        vmap, how = vocabulary(run, corpus, targets, tok, m, reps[m])
        maps.append(vmap)
        mapping[m] = how
    toks = [tok if m == TARGET_PART else _tokenizer(run, m) for m in names]
    skipped, picked, mined = Counter(bad), Counter(), 0
    rows: list[dict[str, Any]] = []
    for row in corpus:
        pid = row["prompt_id"]
        t = targets.get(pid)
        if t is None:
            continue
        missing = [m for m in names if pid not in reps[m]]
        if missing:
            skipped[f"no_representation_{missing[0]}"] += 1
            continue
        srcs = [reps[m][pid] for m in names]
        for s in srcs:
            if not np.isfinite(s["ce"]):
                s["ce"] = np.float32(np.inf)  # no label position on that side: never the best source
        try:
            fused = teacher(t, srcs, maps, spec.method, spec.top_k, split_next=spec.split_next)
        except ValueError:  # a turn's offsets fail: MinED on the pieces' texts
            texts = (piece_texts(tok, t), [piece_texts(tk, s) for tk, s in zip(toks, srcs, strict=True)])
            fused = teacher(t, srcs, maps, spec.method, spec.top_k, texts=texts, split_next=spec.split_next)
            mined += 1
        w = fusion_weights([s["ce"] for s in srcs], spec.method)
        picked[names[int(np.argmax(w))]] += 1
        rows.append(
            {
                "prompt_id": pid,
                "domain": row["domain"],
                "input_ids": t["ids"].tolist(),
                "labels": np.where(t["mask"], t["ids"], -100).tolist(),
                "fused_ids": fused.ids.tolist(),
                "fused_probs": fused.probs.tolist(),
            }
        )
    if not rows:
        from fusechat3.errors import UserError

        raise UserError(f"{name}: no conversation has a representation of every member ({dict(skipped)})")
    stage.write_shard("teacher", rows)
    summary = {
        "members": names,
        "method": spec.method,
        "conversations": len(rows),
        "skipped": dict(skipped),
        "heaviest_source": dict(picked),  # per member: the conversations where it has the largest weight
        "mined_alignments": mined,
        "vocabulary": mapping,
        "seconds": round(time.time() - t0, 1),
    }
    stage.finish(summary)
    lines = [("conversations", len(rows)), *((f"heaviest: {m}", n) for m, n in picked.items())]
    for m, h in mapping.items():
        lines += [
            (f"{m}: ids mapped {way}", h[way]) for way in ("identity", "exact", "statistics", "mined") if way in h
        ]
    lines += [("MinED alignments", mined), *((f"skipped: {w}", n) for w, n in sorted(skipped.items()))]
    print_summary(name, lines, time.time() - t0)


def _settings(run: Run, part: str | None) -> dict:
    spec = run.recipe.explicit
    return {
        "members": members(run.recipe, part),
        "method": spec.method,
        "split_next": spec.split_next,
        "top_k": spec.top_k,
        "vocab_texts": spec.vocab_texts,
        "target": run.recipe.target.model,
    }


TEACHER = StageDef(
    name="teacher",
    help="align the sources to the target, map their vocabularies and fuse them (MinCE/AvgCE) per text",
    run=run_teacher,
    reads=("corpus", "represent"),
    settings=_settings,
    parts=teacher_parts,
    outputs={"rows": "teacher.parquet"},
    enabled=explicit,
    disabled_reason=EXPLICIT_OFF,
)
