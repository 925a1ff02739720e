"""HumanEval (`openai/openai_humaneval`) and, with `plus: true`, HumanEval+ (`evalplus/humanevalplus`: the same
columns with EvalPlus's many more tests): code prompts with tests, the `test` split.

Columns: `task_id`, `prompt` (the function's signature and docstring), `entry_point` (its name), `test` (a program
that defines `check(candidate)` with the asserts); `canonical_solution` is not read. The prompt asks a chat model
for a self-contained program, with the benchmark's prompt in a Python block (`instruction`, a builder argument,
EvalPlus's chat-model wording); the test is `test` followed by `check(<entry_point>)`, run after the response's
program in its namespace, as every code check here is (`fusechat3.scoring.sandbox`).
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, iter_rows, load, text

HUB_ID = "openai/openai_humaneval"
PLUS_ID = "evalplus/humanevalplus"
CODE_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)


def build(
    path: str | None = None,
    plus: bool = False,
    split: str = "test",
    limit: int | None = None,
    revision: str | None = None,
    instruction: str = CODE_INSTRUCTION,
) -> Built:
    hub_id, benchmark = (PLUS_ID, "humanevalplus") if plus else (HUB_ID, "humaneval")
    path = path or hub_id
    ds = load("humaneval", path, ["task_id", "prompt", "entry_point", "test"], split=split, revision=revision)
    out = PromptSet("humaneval", path, hub_id, "code", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        prompt, entry, test = row["prompt"] or "", text(row["entry_point"]), row["test"] or ""
        if not entry or "def check" not in test:
            out.skip("no_tests", prompt)
            continue
        content = f"{instruction}\n```python\n{prompt.strip()}\n```"
        tests = [f"{test.rstrip()}\n\ncheck({entry})\n"]
        out.add(i, content, tests=tests, meta={"benchmark": benchmark, "id": row["task_id"], "entry_point": entry})
    return out.built
