"""UltraFeedback (`openbmb/UltraFeedback`): instruction prompts.

Columns: `source` (where the prompt comes from: evol_instruct, sharegpt, ultrachat, flan_v2_*,
truthful_qa, false_qa), `instruction`, `models`, `completions`, `correct_answers`,
`incorrect_answers`. The prompt is `instruction`; `meta["source"]` keeps `source`. It has no task
category, so the shared math/code removal uses its text heuristic.
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import from_column

HUB_ID = "openbmb/UltraFeedback"


def build(path: str = HUB_ID, split: str = "train", limit: int | None = None, revision: str | None = None) -> Built:
    return from_column(
        "ultrafeedback", HUB_ID, "instruction", path, "instruction", {"source": "source"},
        split=split, limit=limit, revision=revision,
    )  # fmt: skip
