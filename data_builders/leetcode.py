"""LeetCode (`greengerong/leetcode`): code prompts with tests from the statement's examples.

Columns: `id`, `slug`, `title`, `difficulty`, `content` (the statement in markdown, examples as
`**Input:** ... **Output:** ...`), `java`, `c++`, `python` (a reference solution and its
explanation), `javascript`. The prompt is the title and the statement, then one line naming the
entry point the tests call (the reference's: `def twoSum(nums, target)`, or a method of
`class Solution`), since a response that names it otherwise cannot pass. The tests are the examples
as asserts, each kept only if the Python reference passes it in the sandbox
(`data_builders._code_tests.leetcode_tests_many`); a problem left without tests is counted
`no_tests`, and `meta["examples_dropped"]` counts a kept problem's unusable examples by reason.
"""

from __future__ import annotations

import ast

from data_builders import Built
from data_builders._code_tests import leetcode_tests_many
from data_builders._load import PromptSet, iter_rows, load, text
from fusechat3.scoring.code import extract_code

HUB_ID = "greengerong/leetcode"


def entry_point(test: str, reference: str) -> str:
    """The sentence that tells a response which function the test calls, with the reference's parameters."""
    call = next(
        node
        for node in ast.walk(ast.parse(test))
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id == "abs")
    )
    callee = ast.unparse(call.func)  # `twoSum` or `Solution().twoSum`
    name = callee.rsplit(".", 1)[-1]
    params: list[str] = []
    for node in ast.walk(ast.parse(extract_code(reference) or "")):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            params = [a.arg for a in [*node.args.posonlyargs, *node.args.args]]
            break
    if callee.startswith("Solution()."):
        params = params if params[:1] == ["self"] else ["self", *params]
        return f"Write your solution in Python as the method `{name}({', '.join(params)})` of `class Solution`."
    return f"Write your solution in Python as a function `{name}({', '.join(params)})`."


def build(
    path: str = HUB_ID,
    split: str = "train",
    limit: int | None = None,
    revision: str | None = None,
    timeout_s: float = 10.0,
    workers: int = 0,
) -> Built:
    ds = load(
        "leetcode", path, ["id", "slug", "title", "difficulty", "content", "python"], split=split, revision=revision
    )
    if limit is not None:
        ds = ds.select(range(min(max(limit, 0), len(ds))))
    problems = list(iter_rows(ds))
    found = leetcode_tests_many(
        [(row["content"], row["python"]) for _, row in problems], timeout_s=timeout_s, workers=workers
    )
    out = PromptSet("leetcode", path, HUB_ID, "code")
    for (i, row), (tests, dropped) in zip(problems, found, strict=True):
        statement = f"{text(row['title'])}\n\n{text(row['content'])}"
        if not tests:
            out.skip("no_tests")
            continue
        meta = {"id": row["id"], "slug": row["slug"], "difficulty": row["difficulty"], "examples_dropped": dropped}
        out.add(i, f"{statement}\n\n{entry_point(tests[0], row['python'])}", tests=tests, meta=meta)
    return out.built
