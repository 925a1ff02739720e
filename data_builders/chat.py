"""Prompt builder for your own prompts: any file, folder or Hub dataset that
`datasets.load_dataset` reads, with one conversation (or one prompt string) per row.

    prompts:
      - builder: chat
        args: {path: data/my_prompts.jsonl, domain: instruction}
      - builder: chat
        args: {path: org/dataset, split: train, messages_field: prompt, domain: math, gold_field: answer}

`messages_field` holds either a chat list of {role, content} (the conversation so far,
ending with the user's turn) or a plain string (the user's message); `name` and `revision`
pick a Hub dataset's config and revision. `with_response: true` reads conversations that end with
the assistant's answer (an SFT set, a chat corpus such as FuseChat-Mixture): that last turn becomes
the prompt's reference response (`meta["response"]`, the text of explicit fusion's `corpus: prompts`). A missing column or a malformed row is one error
line naming the file, the row and the column; nothing is dropped silently.
"""

from __future__ import annotations

from data_builders._load import iter_rows, load
from fusechat3.errors import RowError
from fusechat3.schema import make_prompt


def _conversation(value: object, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [{"role": m.get("role"), "content": m.get("content")} for m in value]
    raise RowError(
        f"{where}: must be a chat list of {{role, content}} or a string, got {type(value).__name__}; "
        "name the right column with messages_field"
    )


def build(
    path: str,
    domain: str = "instruction",
    split: str = "train",
    messages_field: str = "messages",
    gold_field: str | None = None,
    tests_field: str | None = None,
    limit: int | None = None,
    name: str | None = None,
    revision: str | None = None,
    with_response: bool = False,
) -> list[dict]:
    fields = [f for f in (messages_field, gold_field, tests_field) if f]
    hint = "; name the right ones with args messages_field / gold_field / tests_field"
    ds = load("chat", path, fields, split=split, name=name, revision=revision, hint=hint)
    if limit is not None:
        ds = ds.select(range(min(max(limit, 0), len(ds))))
    rows = []
    for i, row in iter_rows(ds):
        where = f"chat builder: {path}: row {i}, column {messages_field!r}"
        messages = _conversation(row[messages_field], where)
        meta: dict = {"row": i}
        if with_response:
            if len(messages) < 2 or messages[-1].get("role") != "assistant":
                raise RowError(f"{where}: with_response needs a conversation that ends with the assistant's turn")
            meta["response"] = messages[-1]["content"]
            messages = messages[:-1]
        try:
            rows.append(
                make_prompt(
                    domain=domain,
                    source_dataset=str(path),
                    messages=messages,
                    gold=None if gold_field is None else str(row[gold_field]),
                    tests=None if tests_field is None else list(row[tests_field] or []),
                    meta=meta,
                )
            )
        except (RowError, TypeError, KeyError) as e:
            raise RowError(f"chat builder: {path}: row {i}: {e}") from None
    return rows
