"""self-oss-instruct-sc2 (`bigcode/self-oss-instruct-sc2-exec-filter-50k`): code prompts with tests.

Columns: `fingerprint`, `sha1`, `seed`, `response`, `concepts`, `prompt`, `instruction`, `id`. The
prompt is `instruction`; the tests are the top-level `assert`s of the execution-checked `response`
(`data_builders._code_tests.asserts_from_response`). A row whose response has none is counted
`no_tests`.
"""

from __future__ import annotations

from data_builders import Built
from data_builders._code_tests import asserts_from_response
from data_builders._load import PromptSet, iter_rows, load, text

HUB_ID = "bigcode/self-oss-instruct-sc2-exec-filter-50k"


def build(path: str = HUB_ID, split: str = "train", limit: int | None = None, revision: str | None = None) -> Built:
    ds = load("self_oss_instruct", path, ["instruction", "response", "id"], split=split, revision=revision)
    out = PromptSet("self_oss_instruct", path, HUB_ID, "code", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        instruction = text(row["instruction"])
        tests = asserts_from_response(row["response"])
        if tests:
            out.add(i, instruction, tests=tests, meta={"id": row["id"]})
        else:
            out.skip("no_tests", instruction)
    return out.built
