"""Magpie-Pro-DPO (`Magpie-Align/Magpie-Pro-DPO-100K-v0.1`): instruction prompts.

Magpie layout: `uuid`, `instruction`, `gen_input_configs`, `intent`, `knowledge`, `difficulty`,
`input_quality`, `quality_explanation`, `task_category`, `input_length`, `responses`,
`gen_response_configs`, `rewards_armorm`, `chosen`, `rejected`. The prompt is `instruction`;
`meta["category"]` is `task_category` ("Math" and "Coding & Debugging" are removed by the shared step).
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import from_column

HUB_ID = "Magpie-Align/Magpie-Pro-DPO-100K-v0.1"


def build(path: str = HUB_ID, split: str = "train", limit: int | None = None, revision: str | None = None) -> Built:
    return from_column(
        "magpie_pro_dpo", HUB_ID, "instruction", path, "instruction", {"category": "task_category"},
        split=split, limit=limit, revision=revision,
    )  # fmt: skip
