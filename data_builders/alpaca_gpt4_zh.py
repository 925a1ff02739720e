"""alpaca_gpt4_zh (`llamafactory/alpaca_gpt4_zh`): Chinese prompts.

Columns: `instruction`, `input`, `output`. The prompt is `instruction`, followed by a blank line and
`input` when `input` is not empty. No task category: the shared math/code removal uses its heuristic.
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, iter_rows, load, text

HUB_ID = "llamafactory/alpaca_gpt4_zh"


def build(path: str = HUB_ID, split: str = "train", limit: int | None = None, revision: str | None = None) -> Built:
    ds = load("alpaca_gpt4_zh", path, ["instruction", "input"], split=split, revision=revision)
    out = PromptSet("alpaca_gpt4_zh", path, HUB_ID, "zh", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        instruction, extra = text(row["instruction"]), text(row["input"])
        out.add(i, f"{instruction}\n\n{extra}" if instruction and extra else instruction)
    return out.built
