"""HelpSteer2 (`nvidia/HelpSteer2`): instruction prompts.

Columns: `prompt`, `response`, `helpfulness`, `correctness`, `coherence`, `complexity`, `verbosity`.
Each prompt comes with two responses (two rows): they make one Prompt row. A multi-turn prompt holds
the earlier turns as `{user turn 1}\\n<extra_id_1>Assistant\\n{assistant turn 1}\\n<extra_id_1>User\\n
{user turn 2}`: it becomes that conversation (user and assistant messages, ending with the user's).
One whose turns do not alternate so is skipped and counted (`malformed_turns`).
"""

from __future__ import annotations

import re

from data_builders import Built
from data_builders._load import PromptSet, iter_rows, load, text

HUB_ID = "nvidia/HelpSteer2"

_TURN = re.compile(r"\s*<extra_id_1>(User|Assistant)[ \t]*\n?")


def conversation(prompt: str) -> list[dict] | None:
    """HelpSteer2's prompt text as chat messages; None if its turns do not alternate user/assistant."""
    parts = _TURN.split(prompt)
    messages = [{"role": "user", "content": parts[0].strip()}]
    messages += [{"role": r.lower(), "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]
    roles = [m["role"] for m in messages]
    alternate = all(r == ("user" if k % 2 == 0 else "assistant") for k, r in enumerate(roles))
    if not alternate or roles[-1] != "user" or not all(m["content"] for m in messages):
        return None
    return messages


def build(path: str = HUB_ID, split: str = "train", limit: int | None = None, revision: str | None = None) -> Built:
    ds = load("helpsteer2", path, ["prompt"], split=split, revision=revision)
    out = PromptSet("helpsteer2", path, HUB_ID, "instruction", limit=limit, merge=True)
    for i, row in iter_rows(ds):
        if out.full:
            break
        prompt = text(row["prompt"])
        messages = conversation(prompt)
        if messages is None:
            out.skip("malformed_turns", prompt)
            continue
        out.add(i, messages, meta={"turns": (len(messages) + 1) // 2})
    return out.built
