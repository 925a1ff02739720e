"""OpenMathInstruct-2 (`nvidia/OpenMathInstruct-2`): math prompts with gold answers.

Columns: `problem`, `generated_solution`, `expected_answer`, `problem_source` (`gsm8k`, `math`,
`augmented_gsm8k`, `augmented_math`). Many rows (solutions) share a problem: they make one Prompt
row, from the first. The gold answer is `expected_answer` as it is (raw LaTeX; the math scorer
reads it as LaTeX); `meta["problem_source"]` keeps its source. `problem_sources` keeps only problems
of those sources (the others are counted `problem_source_not_selected`); a problem without an
expected answer is counted `no_gold`. `with_response: true` keeps the problem's first
`generated_solution` as its reference response (`meta["response"]`: explicit fusion's training text).
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, iter_rows, load, text
from fusechat3.errors import RecipeError

HUB_ID = "nvidia/OpenMathInstruct-2"


def build(
    path: str = HUB_ID,
    split: str = "train",
    limit: int | None = None,
    revision: str | None = None,
    problem_sources: list[str] | None = None,
    with_response: bool = False,
) -> Built:
    if problem_sources is not None and (
        not isinstance(problem_sources, list) or not all(isinstance(s, str) for s in problem_sources)
    ):
        raise RecipeError(
            f"openmathinstruct2 builder: problem_sources must be a list of names "
            f"(e.g. [gsm8k, math, augmented_gsm8k, augmented_math]), got {problem_sources!r}"
        )
    wanted = None if problem_sources is None else set(problem_sources)
    columns = ["problem", "expected_answer", "problem_source", *(["generated_solution"] if with_response else [])]
    ds = load("openmathinstruct2", path, columns, split=split, revision=revision)
    out = PromptSet("openmathinstruct2", path, HUB_ID, "math", limit=limit, merge=True)
    for i, row in iter_rows(ds):
        if out.full:
            break
        problem, gold = text(row["problem"]), text(row["expected_answer"])
        if wanted is not None and row["problem_source"] not in wanted:
            out.skip("problem_source_not_selected", problem)
        elif not gold:
            out.skip("no_gold", problem)
        else:
            meta = {"problem_source": row["problem_source"]}
            if with_response:
                meta["response"] = text(row["generated_solution"])
            out.add(i, problem, gold=gold, meta=meta)
    return out.built
