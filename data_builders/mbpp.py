"""MBPP (`google-research-datasets/mbpp`, config `sanitized` or `full`) and, with `plus: true`, MBPP+
(`evalplus/mbppplus`): code prompts with tests, the `test` split.

Columns read: `task_id`, the description (`prompt` in `sanitized` and MBPP+, `text` in `full`), `test_list` (assert
lines), and `test_imports` (sanitized, MBPP+) or `test_setup_code` (full); MBPP+ adds `test`, EvalPlus's program
of many more checks, which replaces the assert lines as the test. The prompt shows the description and the first
assert (so the response knows the function's name and signature), as EvalPlus asks; the test runs the imports,
then the asserts (or MBPP+'s program), after the response's program in its namespace.
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, is_local, iter_rows, load, text
from data_builders.humaneval import CODE_INSTRUCTION

HUB_ID = "google-research-datasets/mbpp"
PLUS_ID = "evalplus/mbppplus"


def build(
    path: str | None = None,
    plus: bool = False,
    name: str | None = "sanitized",
    split: str = "test",
    limit: int | None = None,
    revision: str | None = None,
    instruction: str = CODE_INSTRUCTION,
) -> Built:
    hub_id, benchmark = (PLUS_ID, "mbppplus") if plus else (HUB_ID, "mbpp")
    path = path or hub_id
    config = None if plus or is_local(path) else name  # a local copy: the config's own folder or file
    full = not plus and name == "full"
    described, setup = ("text", "test_setup_code") if full else ("prompt", "test_imports")
    columns = ["task_id", described, "test_list", setup, *(["test"] if plus else [])]
    ds = load("mbpp", path, columns, split=split, name=config, revision=revision)
    out = PromptSet("mbpp", path, hub_id, "code", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        description, asserts = text(row[described]), [text(t) for t in row["test_list"] or [] if text(t)]
        imports = row[setup] if isinstance(row[setup], list) else [row[setup] or ""]
        head = "\n".join(text(x) for x in imports if text(x))
        body = (row["test"] or "") if plus else "\n".join(asserts)
        if not asserts or not body.strip():
            out.skip("no_tests", description)
            continue
        content = f'{instruction}\n```python\n"""\n{description}\n{asserts[0]}\n"""\n```'
        tests = [f"{head}\n{body}\n" if head else f"{body}\n"]
        out.add(i, content, tests=tests, meta={"benchmark": benchmark, "id": row["task_id"]})
    return out.built
