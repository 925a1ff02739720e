"""Magpie-Qwen2-Pro-200K-Chinese (`Magpie-Align/Magpie-Qwen2-Pro-200K-Chinese`): Chinese prompts.

Magpie layout: `uuid`, `model`, `gen_input_configs`, `instruction`, `response`, `conversations`,
`task_category`, `other_task_category`, `task_category_generator`, `difficulty`, `intent`,
`knowledge`, ..., `instruct_reward`, `min_neighbor_distance`, `repeat_count`, `language`. The prompt
is `instruction`; `meta["category"]` is `task_category` (English names: "Math" and "Coding &
Debugging" are removed by the shared step).
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import from_column

HUB_ID = "Magpie-Align/Magpie-Qwen2-Pro-200K-Chinese"


def build(path: str = HUB_ID, split: str = "train", limit: int | None = None, revision: str | None = None) -> Built:
    return from_column(
        "magpie_qwen2_zh", HUB_ID, "zh", path, "instruction", {"category": "task_category"},
        split=split, limit=limit, revision=revision,
    )  # fmt: skip
