"""MATH-500 (`HuggingFaceH4/MATH-500`): the 500-problem subset of MATH's test set, its `test` split.

Columns: `problem`, `answer` (the final answer, raw LaTeX), `subject`, `level`, `unique_id` (also `solution`,
not read). The gold answer is `answer`; `meta` keeps subject, level and unique_id. The prompt is the problem with
the math instruction of `gsm8k` (`instruction`: reason step by step, put the final answer in `\\boxed{}`).
A row without an answer is counted `no_gold`.
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, iter_rows, load, text
from data_builders.gsm8k import MATH_INSTRUCTION, with_instruction

HUB_ID = "HuggingFaceH4/MATH-500"


def build(
    path: str = HUB_ID,
    split: str = "test",
    limit: int | None = None,
    revision: str | None = None,
    instruction: str = MATH_INSTRUCTION,
) -> Built:
    ds = load("math500", path, ["problem", "answer", "subject", "level", "unique_id"], split=split, revision=revision)
    out = PromptSet("math500", path, HUB_ID, "math", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        problem, answer = text(row["problem"]), text(row["answer"])
        if not answer:
            out.skip("no_gold", problem)
            continue
        meta = {"benchmark": "math500", "subject": row["subject"], "level": row["level"], "id": row["unique_id"]}
        out.add(i, with_instruction(problem, instruction), gold=answer, meta=meta)
    return out.built
